"""What the analysis section (chapter_vit/what-vit-learns.md) claims about
its functions: known values, shapes, clear errors, and the same numbers in
PyTorch and JAX for the same weights.

The notebook itself is evaluated in both tabs by test_book.py.
"""
import itertools

import jax
import matplotlib
import numpy as np
import pytest
import torch
from jax import numpy as jnp

from d2l_extras import jax as jax_lib
from d2l_extras import torch as torch_lib

from helpers import LIBS, TAB_IDS

matplotlib.use('Agg')


def to_lib(lib, array):
    return torch.tensor(np.asarray(array)) if lib is torch_lib else jnp.asarray(array)


def brute_force_mean_distance(grid, patch_size):
    """The mean distance in pixels between the centres of all ordered pairs of
    patches (a patch and itself included), one pair at a time."""
    height, width = grid
    centres = [((r + 0.5) * patch_size, (c + 0.5) * patch_size)
               for r in range(height) for c in range(width)]
    return np.mean([np.hypot(a[0] - b[0], a[1] - b[1])
                    for a, b in itertools.product(centres, centres)])


def softmax_attention(shape, seed=0):
    logits = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    weights = np.exp(logits)
    return weights / weights.sum(-1, keepdims=True)


# Mean attention distance

@pytest.mark.parametrize('grid, patch_size', [(6, 16), (4, 7), ((3, 5), 8), (1, 4)])
def test_patch_distances_are_pixel_distances_between_patch_centres(grid, patch_size):
    D = jax_lib.patch_distances(grid, patch_size)
    height, width = (grid, grid) if isinstance(grid, int) else grid
    assert D.shape == (height * width, height * width)
    assert np.allclose(np.diag(D), 0) and np.allclose(D, D.T)
    if width > 1:  # patches 0 and 1 are horizontal neighbours
        assert D[0, 1] == pytest.approx(patch_size)
    if height > 1:  # patch 0 and the first of the second row are vertical ones
        assert D[0, width] == pytest.approx(patch_size)
    assert D.mean() == pytest.approx(brute_force_mean_distance((height, width), patch_size), rel=1e-6)
    assert np.array_equal(D, torch_lib.patch_distances(grid, patch_size))


@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
@pytest.mark.parametrize('grid, patch_size', [(6, 16), (4, 7), ((3, 5), 8)])
def test_uniform_attention_gives_the_mean_pairwise_patch_distance(lib, grid, patch_size):
    height, width = (grid, grid) if isinstance(grid, int) else grid
    tokens, batch, heads = height * width + 1, 2, 3
    A = np.full((batch, heads, tokens, tokens), 1 / tokens, np.float32)
    distances = np.asarray(lib.mean_attention_distance(to_lib(lib, A), grid, patch_size))
    assert distances.shape == (heads,)
    np.testing.assert_allclose(distances, brute_force_mean_distance((height, width), patch_size),
                               rtol=1e-5)


@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
def test_identity_attention_gives_distance_zero(lib):
    A = np.broadcast_to(np.eye(37, dtype=np.float32), (2, 4, 37, 37))
    np.testing.assert_allclose(np.asarray(lib.mean_attention_distance(to_lib(lib, A), 6, 16)),
                               np.zeros(4), atol=1e-6)


@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
def test_attention_to_the_class_token_is_ignored(lib):
    """Each query's weights over the patches are renormalized, so attention
    that goes to the class token does not pull the distance towards 0."""
    grid, patch_size, tokens = 4, 8, 17
    A = np.zeros((1, 2, tokens, tokens), np.float32)
    A[:, 0, :, 0], A[:, 0, :, 1:] = 0.9, 0.1 / 16  # head 1: mostly the class token
    A[:, 1, :, 1:] = 1 / 16  # head 2: uniform over the patches
    distances = np.asarray(lib.mean_attention_distance(to_lib(lib, A), grid, patch_size))
    np.testing.assert_allclose(distances, brute_force_mean_distance((4, 4), 8), rtol=1e-5)


@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
def test_attention_to_the_right_neighbour_gives_one_patch_size(lib):
    grid, patch_size, tokens = 3, 10, 10
    A = np.zeros((1, 1, tokens, tokens), np.float32)
    A[0, 0, 0, 0] = 1
    for i in range(9):
        row, col = divmod(i, 3)
        # the right neighbour, or the left one in the last column
        A[0, 0, 1 + i, 1 + row * 3 + (col + 1 if col < 2 else col - 1)] = 1
    np.testing.assert_allclose(np.asarray(lib.mean_attention_distance(to_lib(lib, A), grid,
                                                                      patch_size)), [10.0])


@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
def test_attention_that_does_not_fit_the_grid_is_refused_with_the_fix(lib):
    A = to_lib(lib, softmax_attention((2, 3, 50, 50)))  # 49 patches: a 7x7 grid
    with pytest.raises(ValueError, match=r'50 tokens do not fit .*6x6 grid.*grid_size=7'):
        lib.mean_attention_distance(A, 6, 16)
    with pytest.raises(ValueError, match=r'not the list of blocks'):
        lib.mean_attention_distance(A[0], 7, 16)
    with pytest.raises(ValueError, match='grid_size'):
        lib.class_token_attention(A, 6)


# Attention rollout and the class token's attention

@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
def test_rollout_of_identity_attentions_is_the_identity(lib):
    A = to_lib(lib, np.broadcast_to(np.eye(10, dtype=np.float32), (2, 4, 10, 10)).copy())
    rollout = np.asarray(lib.attention_rollout([A, A, A]))
    assert rollout.shape == (2, 10, 10)
    np.testing.assert_allclose(rollout, np.broadcast_to(np.eye(10), (2, 10, 10)), atol=1e-7)


@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
def test_rollout_averages_heads_adds_the_identity_and_multiplies_blocks(lib):
    A1, A2 = softmax_attention((3, 4, 10, 10), 1), softmax_attention((3, 4, 10, 10), 2)
    one = (A1.mean(1) + np.eye(10)) / 2  # rows of A1 sum to 1, so the sums are 2
    two = (A2.mean(1) + np.eye(10)) / 2
    rollout = np.asarray(lib.attention_rollout([to_lib(lib, A1), to_lib(lib, A2)]))
    np.testing.assert_allclose(rollout, two @ one, rtol=1e-5)
    np.testing.assert_allclose(rollout.sum(-1), 1, rtol=1e-5)  # still a distribution
    with pytest.raises(ValueError, match='return_weights=True'):
        lib.attention_rollout([])


@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
def test_class_token_attention_is_row_zero_laid_out_as_the_grid(lib):
    A = softmax_attention((2, 3, 13, 13))  # a 3x4 grid
    maps = np.asarray(lib.class_token_attention(to_lib(lib, A), (3, 4)))
    assert maps.shape == (2, 3, 3, 4)
    assert maps[1, 2, 1, 3] == A[1, 2, 0, 1 + 1 * 4 + 3]
    # Leading axes are free: one map per image for head-averaged weights
    assert np.asarray(lib.class_token_attention(to_lib(lib, A.mean(1)), (3, 4))).shape == (2, 3, 4)


# Patches, filters and position embeddings

@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
@pytest.mark.parametrize('img_size, patch_size, channels', [(96, 16, 1), (96, 32, 1),
                                                            ((224, 192), 32, 3), (12, 4, 2)])
def test_patches_as_sequence_reads_the_image_row_by_row(lib, img_size, patch_size, channels):
    height, width = (img_size, img_size) if isinstance(img_size, int) else img_size
    images = np.random.default_rng(0).random((2, height, width, channels), dtype=np.float32)
    X = to_lib(lib, images if lib is jax_lib else images.transpose(0, 3, 1, 2))
    patches = np.asarray(lib.patches_as_sequence(X, patch_size))
    if lib is torch_lib:
        patches = patches.transpose(0, 1, 3, 4, 2)  # channels last, as the reference
    grid_width = width // patch_size
    assert patches.shape == (2, height * width // patch_size**2, patch_size, patch_size, channels)
    for i in (0, 1, grid_width, patches.shape[1] - 1):
        row, col = divmod(i, grid_width)
        np.testing.assert_array_equal(patches[:, i], images[:, row * patch_size:(row + 1) * patch_size,
                                                            col * patch_size:(col + 1) * patch_size])


@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
def test_patches_as_sequence_refuses_sizes_the_patches_do_not_tile(lib):
    X = to_lib(lib, np.zeros((1, 1, 100, 100), np.float32))
    with pytest.raises(ValueError, match='not divisible by the patch size 16'):
        lib.patches_as_sequence(X, 16)


def low_rank_filters(num_filters, size, seed=0):
    """Filters with a few well-separated principal directions plus noise, so
    that the leading components are well defined (a random matrix has nearly
    equal singular values, whose directions any rounding may rotate)."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(size, 6)))[0].T  # 6 orthonormal directions
    scales = np.array([8, 6, 4.5, 3, 2, 1.5])[:, None]
    return (rng.normal(size=(num_filters, 6)) @ (scales * basis) +
            0.01 * rng.normal(size=(num_filters, size))).astype(np.float32)


@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
def test_patch_embedding_components_are_orthonormal_and_sorted(lib):
    filters = low_rank_filters(64, 3 * 4 * 4)
    if lib is torch_lib:  # (out, channels, p, p)
        weight = torch.tensor(filters.reshape(64, 3, 4, 4))
    else:  # (p, p, channels, out)
        weight = jnp.asarray(filters.reshape(64, 4, 4, 3).transpose(1, 2, 3, 0))
    components, explained = lib.patch_embedding_components(weight, 5)
    components, explained = np.asarray(components), np.asarray(explained)
    assert components.shape == ((5, 3, 4, 4) if lib is torch_lib else (5, 4, 4, 3))
    flat = components.reshape(5, -1)
    np.testing.assert_allclose(flat @ flat.T, np.eye(5), atol=1e-5)
    assert (np.diff(explained) <= 0).all() and explained.sum() < 1
    assert explained.sum() > 0.97  # the sixth direction and the noise hold under 2%
    # The sign convention: every component's largest entry is positive
    assert (flat[np.arange(5), np.abs(flat).argmax(1)] > 0).all()
    with pytest.raises(ValueError, match='num_components=49 must be between 1 and 48'):
        lib.patch_embedding_components(weight, 49)


@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
def test_position_embedding_similarity_is_symmetric_with_ones_on_the_diagonal(lib):
    pos_embedding = np.random.default_rng(0).normal(size=(1, 1 + 3 * 4, 32)).astype(np.float32)
    similarity = np.asarray(lib.position_embedding_similarity(to_lib(lib, pos_embedding), (3, 4)))
    assert similarity.shape == (3, 4, 3, 4)
    flat = similarity.reshape(12, 12)
    np.testing.assert_allclose(np.diag(flat), 1, rtol=1e-5)
    np.testing.assert_allclose(flat, flat.T, atol=1e-6)
    assert np.abs(flat).max() <= 1 + 1e-5
    # The class token is left out: shifting it changes nothing
    pos_embedding[0, 0] += 10
    np.testing.assert_allclose(
        lib.position_embedding_similarity(to_lib(lib, pos_embedding), (3, 4)), similarity)
    # Without a class token (mean pooling), all embeddings are positions
    assert lib.position_embedding_similarity(to_lib(lib, pos_embedding[:, 1:]), (3, 4),
                                             num_prefix_tokens=0).shape == (3, 4, 3, 4)
    with pytest.raises(ValueError, match='13 tokens do not fit 1 class token'):
        lib.position_embedding_similarity(to_lib(lib, pos_embedding), 4)


# Both frameworks, the same weights, the same numbers

@pytest.fixture(scope='module')
def model_pair():
    """A small PyTorch ViT with some structure in its patch filters, its
    weights copied into the JAX ViT, and both models' attention weights for the
    same images."""
    torch.manual_seed(0)
    config = (32, 8, 48, 96, 4, 3, 0.1, 0.1)  # 4x4 grid, 4 heads, 3 blocks
    torch_vit = torch_lib.ViT(*config, num_channels=3).eval()
    with torch.no_grad():
        torch_vit.patch_embedding.conv.weight.copy_(
            torch.tensor(low_rank_filters(48, 3 * 8 * 8).reshape(48, 3, 8, 8)))
    jax_vit = jax_lib.ViT(*config, num_channels=3)
    variables = jax_lib.params_from_torch(torch_vit)
    X = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        _, torch_attention = torch_vit(X, return_weights=True)
    _, jax_attention = jax_vit.apply(variables, jnp.asarray(X.numpy().transpose(0, 2, 3, 1)),
                                     return_weights=True)
    return torch_vit, variables['params'], torch_attention, jax_attention


def test_both_frameworks_give_the_same_attention_analyses(model_pair):
    _, _, torch_attention, jax_attention = model_pair
    for A_torch, A_jax in zip(torch_attention, jax_attention):
        np.testing.assert_allclose(np.asarray(A_jax), A_torch.numpy(), atol=1e-5)
        np.testing.assert_allclose(np.asarray(jax_lib.mean_attention_distance(A_jax, 4, 8)),
                                   torch_lib.mean_attention_distance(A_torch, 4, 8).numpy(),
                                   rtol=1e-5)
        np.testing.assert_allclose(np.asarray(jax_lib.class_token_attention(A_jax, 4)),
                                   torch_lib.class_token_attention(A_torch, 4).numpy(), atol=1e-5)
    np.testing.assert_allclose(np.asarray(jax_lib.attention_rollout(jax_attention)),
                               torch_lib.attention_rollout(torch_attention).numpy(), atol=1e-5)


def test_both_frameworks_give_the_same_filters_and_position_maps(model_pair):
    torch_vit, params, _, _ = model_pair
    torch_components, torch_explained = torch_lib.patch_embedding_components(
        torch_vit.patch_embedding.conv.weight, 5)
    jax_components, jax_explained = jax_lib.patch_embedding_components(
        params['patch_embedding']['conv']['kernel'], 5)
    # The same components, signs included; only the channel axis moves
    np.testing.assert_allclose(np.asarray(jax_components),
                               torch_components.numpy().transpose(0, 2, 3, 1), atol=1e-4)
    np.testing.assert_allclose(np.asarray(jax_explained), torch_explained.numpy(), rtol=1e-4)
    np.testing.assert_allclose(
        np.asarray(jax_lib.position_embedding_similarity(params['pos_embedding'], 4)),
        torch_lib.position_embedding_similarity(torch_vit.pos_embedding, 4).numpy(), atol=1e-5)


# The plotting functions draw from NumPy arrays in either library

@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
def test_the_plotting_functions_draw(lib):
    plt = matplotlib.pyplot
    rng = np.random.default_rng(0)
    image = rng.random((32, 24, 3), dtype=np.float32)
    lib.show_patch_sequence(image, np.asarray(jax_lib.patches_as_sequence(jnp.asarray(image)[None], 8))[0])
    lib.show_position_similarity(rng.uniform(-1, 1, (3, 4, 3, 4)))
    lib.show_attention(image[None], rng.random((1, 3, 4, 3)), ['a', 'b', 'c'])
    lib.plot_attention_distance([rng.random(4) * 10 for _ in range(3)], reference=5.0)
    lib.plot_attention_distance([[rng.random(4)] * 2, [rng.random(4)] * 2], 5.0,
                                labels=['trained', 'untrained'])
    assert len(plt.get_fignums()) == 5  # one figure each
    plt.close('all')
