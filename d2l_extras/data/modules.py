"""The data module of both datasets and both tabs: loading, batching and
showing a labelled image dataset (or its offline stand-in).

Each library adds d2l's ``DataModule`` base and its image layout (NCHW tensors
for PyTorch, NHWC arrays for JAX); each dataset names its loader and its own
image size.
"""
import numpy as np

from d2l_extras.d2l_jax import plotting
from d2l_extras.data.loader import ArrayLoader, image_batch_transform
from d2l_extras.data.cifar10 import load_cifar10
from d2l_extras.data.fashion_mnist import load_fashion_mnist
from d2l_extras.data.standins import load_uci_digits


class ImageDataModule:
    """A labelled image dataset in minibatches of ``batch_size`` images resized
    to ``resize`` (by default the dataset's own ``image_size``), at most
    ``num_train`` and ``num_val`` of them, with an optional
    ``augment(images, rng)`` for the training images and an optional
    ``mix(images, labels, rng)`` for the training minibatches, which returns
    mixed images and soft labels (see ``loader.image_batch_transform``);
    ``root`` is the data folder (see ``data.download.data_root``)."""
    channels_last = False
    image_size = None
    load_arrays = None  # the dataset's loader: root -> ImageArrays

    def __init__(self, batch_size=64, resize=None, root=None,
                 num_train=None, num_val=None, augment=None, mix=None):
        super().__init__()
        resize = resize or self.image_size
        # mix came after runs were recorded and parameters kept with these
        # hyperparameters: unused, it stays out of them, so that they match
        self.save_hyperparameters(ignore=[] if mix is not None else ['mix'])
        self.mix = mix
        self.load(root, num_train, num_val)

    def load(self, root=None, num_train=None, num_val=None):
        self.arrays = self.load_arrays(root).subset(num_train, num_val)
        self.num_classes = self.arrays.num_classes
        self.train = (self.arrays.train_images, self.arrays.train_labels)
        self.val = (self.arrays.val_images, self.arrays.val_labels)

    def convert(self, array):
        """Turn a NumPy batch into the framework's array type."""
        return array

    def get_dataloader(self, train):
        # Augmentation and mixing (if any) change the training batches only.
        transform = image_batch_transform(self.resize, self.arrays.max_value,
                                          self.channels_last, self.convert,
                                          self.augment if train else None,
                                          mix=self.mix if train else None)
        return ArrayLoader(self.train if train else self.val, self.batch_size,
                           shuffle=train, transform=transform)

    def text_labels(self, indices):
        """Return text labels."""
        return [self.arrays.text_labels[int(i)] for i in indices]

    def visualize(self, batch, nrows=1, ncols=8, labels=[]):
        X, y = batch
        if not labels:
            labels = self.text_labels(y)
        images = [plotting.to_numpy(x) for x in X[:nrows * ncols]]
        if not self.channels_last:  # CHW -> HWC, as matplotlib wants it
            images = [np.moveaxis(x, 0, -1) for x in images]
        images = [x.squeeze(-1) if x.shape[-1] == 1 else x for x in images]
        plotting.show_images(images, nrows, ncols, titles=labels)


class FashionMNISTData(ImageDataModule):
    """Fashion-MNIST, or the UCI digits offline."""
    image_size = (28, 28)
    load_arrays = staticmethod(load_fashion_mnist)


class CIFAR10Data(ImageDataModule):
    """CIFAR-10, or the UCI digits in colour offline."""
    image_size = (32, 32)
    load_arrays = staticmethod(load_cifar10)


class UCIDigitsData(ImageDataModule):
    """The UCI handwritten digits that ship with scikit-learn: 1,413 training
    and 384 validation images of 8x8 pixels, in 10 classes."""
    image_size = (8, 8)
    load_arrays = staticmethod(load_uci_digits)
