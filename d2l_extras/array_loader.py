"""Minibatches from NumPy image arrays: resized, scaled to [0, 1], shuffled.

One loader serves both tabs. It works on whole batches (one resize per batch,
not per image) and hands each array to a ``convert`` function, so PyTorch gets
tensors and JAX gets arrays without either framework's data pipeline.
"""
import math

import numpy as np

from d2l_extras.image_resize import resize_images


class ArrayLoader:
    """Iterate over (X, y) minibatches; every pass is a new shuffle if ``shuffle``.

    X has shape (batch, 1, H, W) or, with ``channels_last``, (batch, H, W, 1).
    """
    def __init__(self, images, labels, batch_size, resize, max_value,
                 shuffle=False, channels_last=False, convert=None, seed=0):
        if len(images) != len(labels):
            raise ValueError(f'{len(images)} images but {len(labels)} labels')
        self.images, self.labels = images, labels
        self.batch_size, self.resize, self.max_value = batch_size, resize, max_value
        self.shuffle, self.channels_last = shuffle, channels_last
        self.convert = convert if convert is not None else (lambda a: a)
        self.rng = np.random.default_rng(seed)

    def __len__(self):
        return math.ceil(len(self.labels) / self.batch_size)

    def __iter__(self):
        order = (self.rng.permutation(len(self.labels)) if self.shuffle
                 else np.arange(len(self.labels)))
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            X = resize_images(self.images[idx], self.resize) / np.float32(self.max_value)
            X = X[..., None] if self.channels_last else X[:, None]
            yield self.convert(X), self.convert(self.labels[idx])
