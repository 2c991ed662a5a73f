"""A labelled image dataset held as NumPy arrays, before batching."""
import dataclasses

import numpy as np


@dataclasses.dataclass
class ImageArrays:
    """Training and validation images with their labels.

    Images have shape (N, H, W) (grayscale) or (N, H, W, C) (colour) and raw
    pixel values in [0, max_value]; labels are int64 class indices into
    ``text_labels``.
    """
    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    text_labels: tuple
    max_value: float

    @property
    def num_classes(self):
        return len(self.text_labels)

    def subset(self, num_train=None, num_val=None, seed=0):
        """A random subset of at most ``num_train`` and ``num_val`` examples
        (None keeps them all), the same for the same seed.

        Subsets are nested: for the same seed, the first ``n`` examples of one
        random order, so a smaller ``num_train`` keeps part of the examples
        of a larger one; and the validation examples do not depend on
        ``num_train``.
        """
        rng = np.random.default_rng(seed)

        def pick(images, labels, limit):
            order = rng.permutation(len(labels))  # drawn even if all are kept
            if limit is None or limit >= len(labels):
                return images, labels
            keep = np.sort(order[:limit])
            return images[keep], labels[keep]

        train = pick(self.train_images, self.train_labels, num_train)
        val = pick(self.val_images, self.val_labels, num_val)
        return dataclasses.replace(self, train_images=train[0], train_labels=train[1],
                                   val_images=val[0], val_labels=val[1])
