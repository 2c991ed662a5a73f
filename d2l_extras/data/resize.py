"""Resizing image batches in NumPy, so both tabs see the same pixels.

The filter is bilinear with antialiasing, the same as PIL's ``BILINEAR`` and
torchvision's ``Resize(antialias=True)``: when upsampling it is plain linear
interpolation between pixel centres, when downsampling the triangle filter is
widened so that every input pixel contributes (no aliasing).
"""
import functools

import numpy as np


@functools.lru_cache(maxsize=32)
def resize_matrix(in_size, out_size):
    """The (out_size, in_size) matrix that resizes one image axis."""
    if in_size < 1 or out_size < 1:
        raise ValueError(f'sizes must be positive, got {in_size} -> {out_size}')
    scale = in_size / out_size
    support = max(scale, 1.0)  # widen the triangle only when shrinking
    centers = (np.arange(out_size) + 0.5) * scale  # in input pixel units
    positions = np.arange(in_size) + 0.5
    distance = np.abs(positions[None, :] - centers[:, None]) / support
    weights = np.clip(1.0 - distance, 0.0, None)
    # Near the border part of the filter falls outside the image: renormalise
    # so that a constant image stays constant.
    weights /= weights.sum(axis=1, keepdims=True)
    return weights.astype(np.float32)


def resize_images(images, size):
    """Resize a batch of grayscale images of shape (N, H, W), or of colour
    images of shape (N, H, W, C), to height and width ``size``, as float32.

    ``size`` is an int or an (height, width) pair. Each channel is resized on
    its own, with the same filter.
    """
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    images = np.asarray(images, dtype=np.float32)
    if images.ndim not in (3, 4):
        raise ValueError(f'expected images of shape (N, H, W) or (N, H, W, C), '
                         f'got {images.shape}')
    if images.shape[1:3] == (height, width):
        return images
    rows = resize_matrix(images.shape[1], height)
    cols = resize_matrix(images.shape[2], width)
    if images.ndim == 4:
        return np.einsum('hi,niwc,vw->nhvc', rows, images, cols, optimize=True)
    return np.einsum('hi,niw,vw->nhv', rows, images, cols, optimize=True)
