"""The offline stand-ins for Fashion-MNIST and CIFAR-10: the UCI handwritten digits.

scikit-learn ships them inside the package (1,797 images of 8x8 pixels with
values 0..16, 10 classes), so they load with no network. We split them into
training and validation parts the same way every time, stratified by class so
that both parts have all ten digits in the same proportions.

The validation part has 384 images, about a fifth, which is three whole
minibatches of 128 (the chapter's minibatch size): in JAX a smaller last
minibatch is a new shape, compiled anew for every model the book evaluates.
"""
import dataclasses

import numpy as np

from d2l_extras.data.arrays import ImageArrays

NUM_VAL = 384
SPLIT_SEED = 0


def stratified_counts(labels, total):
    """How many examples of each class make a sample of ``total`` in the
    classes' proportions (largest remainders, so the counts sum to ``total``)."""
    exact = total * np.bincount(labels) / len(labels)
    counts = np.floor(exact).astype(int)
    counts[np.argsort(counts - exact)[:total - counts.sum()]] += 1
    return counts


def load_digits():
    from sklearn.datasets import load_digits as sklearn_load_digits
    digits = sklearn_load_digits()
    images = digits.images.astype(np.uint8)  # values 0..16 fit in a byte
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(SPLIT_SEED)
    val_mask = np.zeros(len(labels), dtype=bool)
    for label, num_val in enumerate(stratified_counts(labels, NUM_VAL)):
        members = rng.permutation(np.flatnonzero(labels == label))
        val_mask[members[:num_val]] = True
    return ImageArrays('UCI digits (offline stand-in)',
                       images[~val_mask], labels[~val_mask],
                       images[val_mask], labels[val_mask],
                       tuple(str(d) for d in range(10)), 16.0)


def load_uci_digits(root=None, verbose=True):
    """The UCI digits as a dataset of their own (not standing in for
    another), with the split of ``load_digits``; prints one line saying so.
    ``root`` is unused: scikit-learn ships them."""
    digits = load_digits()
    digits = dataclasses.replace(digits, name='UCI digits')
    if verbose:
        print(f"UCI digits from scikit-learn: {len(digits.train_labels):,} "
              f"training and {len(digits.val_labels):,} validation images "
              f"of 8x8 pixels.")
    return digits


def describe(arrays):
    height, width = arrays.train_images.shape[1:]
    return (f"scikit-learn's UCI digits, {len(arrays.train_labels)} training and "
            f'{len(arrays.val_labels)} validation images of {height}x{width} '
            f'pixels in {arrays.num_classes} classes, resized like Fashion-MNIST')


COLOUR_SEED = 1
COLOUR_SIZE = 32


def load_colour_digits(size=COLOUR_SIZE):
    """The offline stand-in for CIFAR-10: the digits of ``load_digits`` (same
    split), each resized to ``size`` x ``size`` pixels and drawn in a random
    colour on a random background colour, as uint8 RGB images (N, H, W, 3).

    The colours carry no information about the class, and each channel of
    the digit differs from the background by at least 88 levels, so that
    every digit stays visible."""
    from d2l_extras.data.resize import resize_images
    digits = load_digits()
    rng = np.random.default_rng(COLOUR_SEED)

    def colour(images):
        ink = resize_images(images, size)[..., None] / 16  # (N, H, W, 1) in [0, 1]
        background = rng.integers(0, 256, (len(images), 1, 1, 3))
        ink_colour = (background + 128 + rng.integers(-40, 41, background.shape)) % 256
        return np.round(background + (ink_colour - background) * ink).astype(np.uint8)

    return ImageArrays('UCI digits in colour (offline stand-in)',
                       colour(digits.train_images), digits.train_labels,
                       colour(digits.val_images), digits.val_labels,
                       digits.text_labels, 255.0)


def describe_colour_digits(arrays):
    height, width = arrays.train_images.shape[1:3]
    return (f"scikit-learn's UCI digits, each in a random colour on a random "
            f'background, {len(arrays.train_labels)} training and '
            f'{len(arrays.val_labels)} validation images of {height}x{width} '
            f'pixels in {arrays.num_classes} classes')


def instead_of(dataset, error, load, describe, verbose=True):
    """The stand-in that ``load`` returns, for a ``dataset`` that could not be
    had (``error`` says why); says so in one line with ``describe``."""
    standin = load()
    if verbose:
        print(f'{dataset} is not available offline ({error}); using the '
              f'stand-in: {describe(standin)}.')
    return standin
