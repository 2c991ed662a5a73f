"""The offline stand-in for Fashion-MNIST: the UCI handwritten digits.

scikit-learn ships them inside the package (1,797 images of 8x8 pixels with
values 0..16, 10 classes), so they load with no network. We split them into
training and validation parts the same way every time, stratified by class so
that both parts have all ten digits in the same proportions.
"""
import numpy as np

from d2l_extras.image_arrays import ImageArrays

VAL_FRACTION = 0.2
SPLIT_SEED = 0


def load_digits():
    from sklearn.datasets import load_digits as sklearn_load_digits
    digits = sklearn_load_digits()
    images = digits.images.astype(np.uint8)  # values 0..16 fit in a byte
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(SPLIT_SEED)
    val_mask = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        val_mask[members[:round(VAL_FRACTION * len(members))]] = True
    return ImageArrays('UCI digits (offline stand-in)',
                       images[~val_mask], labels[~val_mask],
                       images[val_mask], labels[val_mask],
                       tuple(str(d) for d in range(10)), 16.0)


def describe(arrays):
    height, width = arrays.train_images.shape[1:]
    return (f"scikit-learn's UCI digits, {len(arrays.train_labels)} training and "
            f'{len(arrays.val_labels)} validation images of {height}x{width} '
            f'pixels in {arrays.num_classes} classes, resized like Fashion-MNIST')
