"""Minibatches of NumPy arrays, for both tabs and for any data module.

One loader serves PyTorch and JAX: it slices whole batches out of arrays held
in memory, reshuffles on every pass when training, and hands each batch to a
``transform`` (for images: resize, scale, lay out, convert to tensors), so
neither framework's data pipeline is needed.
"""
import math

import numpy as np

from d2l_extras.data.resize import resize_images


class ArrayLoader:
    """Iterate over minibatches of equally long arrays, as tuples."""
    def __init__(self, arrays, batch_size, shuffle=False, transform=None, seed=0):
        if len({len(a) for a in arrays}) != 1:
            raise ValueError(f'arrays of different lengths: {[len(a) for a in arrays]}')
        self.arrays, self.batch_size, self.shuffle = arrays, batch_size, shuffle
        self.transform = transform if transform is not None else (lambda *batch: batch)
        self.rng = np.random.default_rng(seed)

    def __len__(self):
        return math.ceil(len(self.arrays[0]) / self.batch_size)

    def __iter__(self):
        n = len(self.arrays[0])
        order = self.rng.permutation(n) if self.shuffle else np.arange(n)
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            yield tuple(self.transform(*(np.asarray(a)[idx] for a in self.arrays)))


def check_soft_labels(labels, num_examples):
    """Soft labels as float32, or a ValueError that says what is wrong: one
    row per example, of shape (``num_examples``, number of classes), of
    non-negative weights that sum to 1."""
    labels = np.asarray(labels)
    if (labels.ndim != 2 or len(labels) != num_examples
            or not np.issubdtype(labels.dtype, np.floating)):
        raise ValueError(
            'mix(images, labels, rng) must return soft labels, floats of shape '
            f'({num_examples}, number of classes); got {labels.dtype} of shape '
            f'{labels.shape}')
    sums = labels.sum(axis=1)
    if (labels < 0).any() or not np.allclose(sums, 1, atol=1e-5):
        raise ValueError(
            'mix(images, labels, rng) must return soft labels, rows of '
            'non-negative weights that sum to 1; got row sums from '
            f'{sums.min():.4g} to {sums.max():.4g} and a smallest weight of '
            f'{labels.min():.4g}')
    return labels.astype(np.float32)


def image_batch_transform(resize, max_value, channels_last, convert=None,
                          augment=None, seed=0, mix=None):
    """A transform for (images, labels) batches: ``augment``, ``mix``, resize,
    scale to [0, 1], lay out as NCHW (or NHWC with ``channels_last``), then
    ``convert``.

    Grayscale images come as (N, H, W) and get a channel axis of size 1;
    colour images come as (N, H, W, C). ``augment(images, rng)`` gets the raw
    images in that shape and a NumPy random generator seeded with ``seed``,
    so augmented runs repeat exactly. ``mix(images, labels, rng)`` then gets
    the whole minibatch, the (augmented) raw images and their integer labels,
    and the same generator, and returns mixed images of the same shape and
    their soft labels (see ``check_soft_labels``), as Mixup and CutMix do.
    """
    convert = convert if convert is not None else (lambda a: a)
    rng = np.random.default_rng(seed)

    def transform(images, labels):
        if augment is not None:
            images = augment(images, rng)
        if mix is not None:
            num_examples = len(images)
            images, labels = mix(images, labels, rng)
            if np.shape(images)[0] != num_examples:
                raise ValueError(f'mix(images, labels, rng) got {num_examples} '
                                 f'images and returned {len(images)}')
            labels = check_soft_labels(labels, num_examples)
        X = resize_images(images, resize) / np.float32(max_value)
        if X.ndim == 3:  # grayscale: add the channel axis
            X = X[..., None] if channels_last else X[:, None]
        elif not channels_last:  # colour, (N, H, W, C) -> (N, C, H, W)
            X = np.ascontiguousarray(X.transpose(0, 3, 1, 2))
        return convert(X), convert(labels)

    return transform
