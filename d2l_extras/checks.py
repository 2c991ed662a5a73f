"""Checks that turn silent shape mistakes into errors that say what to do.

A patch embedding whose stride does not divide the image drops the leftover
rows and columns without a word, and a convolution fed the wrong number of
channels fails deep inside the framework. Both tabs call these first.
"""


def _pair(size, name):
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(s, int) and s > 0 for s in pair):
        raise ValueError(f'{name} must be a positive int or a (height, width) '
                         f'pair of them, got {size!r}')
    return pair


def patch_grid(img_size, patch_size):
    """Return (img_size, patch_size, grid_size) as (height, width) pairs.

    Raises ValueError when the patches do not tile the image exactly.
    """
    img_size, patch_size = _pair(img_size, 'img_size'), _pair(patch_size, 'patch_size')
    for axis, img, patch in zip(('height', 'width'), img_size, patch_size):
        if img % patch:
            lower = img - img % patch
            nearest = ' or '.join(str(m) for m in (lower, lower + patch) if m)
            raise ValueError(
                f'image {axis} {img} is not divisible by the patch size {patch}: '
                f'the last {img % patch} pixels would be silently dropped. Resize '
                f'the images to a multiple of {patch} (such as {nearest}) or '
                f'choose a patch size that divides {img}.')
    grid_size = (img_size[0] // patch_size[0], img_size[1] // patch_size[1])
    return img_size, patch_size, grid_size


def check_image_batch(shape, num_channels, img_size, channels_last):
    """Check that a batch of images has the shape the model was built for.

    ``shape`` is (batch, C, H, W), or (batch, H, W, C) with ``channels_last``.
    """
    layout = 'NHWC' if channels_last else 'NCHW'
    if len(shape) != 4:
        raise ValueError(f'expected a batch of images of shape {layout}, got shape '
                         f'{tuple(shape)}; add the missing batch or channel axis')
    channels = shape[3] if channels_last else shape[1]
    height, width = (shape[1], shape[2]) if channels_last else (shape[2], shape[3])
    if channels != num_channels:
        raise ValueError(
            f'the model expects {num_channels} channel(s) but the images '
            f'({layout}, shape {tuple(shape)}) have {channels}: build the model '
            f'with num_channels={channels}, or convert the images '
            f'{"to grayscale" if num_channels == 1 else "to RGB"}'
            f'{"" if channels_last else ", and check that they are NCHW, not NHWC"}.')
    if (height, width) != tuple(img_size):
        raise ValueError(f'the model was built for {img_size[0]}x{img_size[1]} '
                         f'images but got {height}x{width}: resize the images or '
                         f'build the model with img_size={(height, width)}.')


def check_position_grid(num_embeddings, num_prefix_tokens, grid_size):
    """Check that position embeddings are one per prefix token plus one per
    cell of a (height, width) grid of patches."""
    if num_embeddings != num_prefix_tokens + grid_size[0] * grid_size[1]:
        raise ValueError(f'{num_embeddings} position embeddings do not fit '
                         f'{num_prefix_tokens} + a {tuple(grid_size)} grid')


def grid_pair(grid_size):
    """A grid of patches as a (height, width) pair; an int means a square grid."""
    return _pair(grid_size, 'grid_size')


def check_token_grid(num_tokens, grid_size, num_prefix_tokens=1):
    """Return ``grid_size`` as a (height, width) pair after checking that
    ``num_tokens`` tokens are ``num_prefix_tokens`` class tokens followed by
    one token per patch of that grid."""
    height, width = grid_pair(grid_size)
    expected = num_prefix_tokens + height * width
    if num_tokens != expected:
        num_patches = num_tokens - num_prefix_tokens
        side = round(max(num_patches, 0) ** 0.5)
        hint = (f', such as grid_size={side}' if num_patches > 0 and
                side * side == num_patches else '')
        raise ValueError(
            f'{num_tokens} tokens do not fit {num_prefix_tokens} class token(s) '
            f'and a {height}x{width} grid of patches, which make {expected}: '
            f'pass the grid_size of the model that computed them (image size '
            f'// patch size: {num_patches} patches{hint})')
    return height, width


def check_window_grid(grid_size, window_size):
    """Return the grid of tokens as a (height, width) pair after checking that
    windows of ``window_size`` x ``window_size`` tokens tile it exactly."""
    height, width = grid_pair(grid_size)
    if not isinstance(window_size, int) or window_size <= 0:
        raise ValueError(f'window_size must be a positive int, got {window_size!r}')
    if height % window_size or width % window_size:
        divisors = [m for m in range(2, min(height, width) + 1)
                    if height % m == 0 and width % m == 0]
        nearest = sorted(sorted(divisors, key=lambda m: abs(m - window_size))[:2])
        hint = (f'a window size that divides both (such as '
                f'{" or ".join(map(str, nearest))})' if divisors else
                'another window size')
        raise ValueError(
            f'a {height}x{width} grid of tokens does not split into windows of '
            f'{window_size}x{window_size} tokens: choose {hint}, or an image '
            f'size whose grid of tokens is a multiple of {window_size} on each '
            'side.')
    return height, width


def merged_grid(grid_size):
    """The grid of tokens after patch merging, which joins each 2x2 group of
    neighbouring tokens into one; refuses odd sides, which would drop tokens."""
    height, width = grid_pair(grid_size)
    if height % 2 or width % 2:
        raise ValueError(
            f'patch merging joins 2x2 neighbouring tokens, but the grid is '
            f'{height}x{width}: choose an image size that gives even grids at '
            'every stage but the last (a multiple of patch_size * '
            '2**(no. of stages - 1) on each side).')
    return height // 2, width // 2


POSITION_EMBEDDINGS = ('learn', 'sincos2d', 'sincos1d', 'none')


def check_posemb(posemb):
    """Check the name of a kind of position embedding."""
    if posemb not in POSITION_EMBEDDINGS:
        raise ValueError(f'posemb must be one of {POSITION_EMBEDDINGS}, got '
                         f'{posemb!r}')


def check_sincos_width(num_hiddens, num_blocks):
    """Check that ``num_hiddens`` splits into ``num_blocks`` blocks of sines
    and cosines (2 in 1D, 4 in 2D) with at least two frequencies each."""
    if (not isinstance(num_hiddens, int) or num_hiddens % num_blocks
            or num_hiddens < 2 * num_blocks):
        raise ValueError(
            f'{num_blocks // 2}D sine-cosine embeddings split the width into '
            f'{num_blocks} blocks of sines and cosines, at least 2 wide, but '
            f'num_hiddens={num_hiddens!r}: choose a multiple of {num_blocks} '
            f'of at least {2 * num_blocks}')


def num_kept_patches(num_patches, mask_ratio):
    """How many of ``num_patches`` patches a masked autoencoder keeps visible
    when it masks the fraction ``mask_ratio`` of them (rounding down, as MAE
    does); at least one must stay."""
    if not 0 <= mask_ratio < 1:
        raise ValueError(f'mask_ratio={mask_ratio!r} is the fraction of patches to mask: '
                         'choose a number in [0, 1), such as 0.75')
    num_keep = int(num_patches * (1 - mask_ratio))
    if num_keep < 1:
        raise ValueError(f'mask_ratio={mask_ratio} masks all {num_patches} patches: the '
                         f'encoder needs one at least; choose a ratio below '
                         f'{1 - 1 / num_patches:.3f}')
    return num_keep
