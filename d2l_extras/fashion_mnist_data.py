"""What the PyTorch and JAX ``FashionMNIST`` and ``CIFAR10`` data modules share.

Each tab's module adds d2l's ``DataModule`` base and its image layout: NCHW
tensors for PyTorch, NHWC arrays for JAX.
"""
import numpy as np

from d2l_extras import plotting
from d2l_extras.array_loader import ArrayLoader, image_batch_transform
from d2l_extras.cifar10 import load_cifar10
from d2l_extras.fashion_mnist import load_fashion_mnist


class ImageBatches:
    """Loading, batching and showing a labelled image dataset (or its offline
    stand-in); ``load_arrays(root)`` says which."""
    channels_last = False

    def load_arrays(self, root):
        raise NotImplementedError

    def load(self, root=None, num_train=None, num_val=None):
        self.arrays = self.load_arrays(root).subset(num_train, num_val)
        self.num_classes = self.arrays.num_classes
        self.train = (self.arrays.train_images, self.arrays.train_labels)
        self.val = (self.arrays.val_images, self.arrays.val_labels)

    def convert(self, array):
        """Turn a NumPy batch into the framework's array type."""
        return array

    def get_dataloader(self, train):
        # Augmentation (if any) changes the training images only.
        transform = image_batch_transform(self.resize, self.arrays.max_value,
                                          self.channels_last, self.convert,
                                          self.augment if train else None)
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


class FashionMNISTBatches(ImageBatches):
    """Fashion-MNIST, or the UCI digits offline."""
    def load_arrays(self, root):
        return load_fashion_mnist(root)


class CIFAR10Batches(ImageBatches):
    """CIFAR-10, or the UCI digits in colour offline."""
    def load_arrays(self, root):
        return load_cifar10(root)
