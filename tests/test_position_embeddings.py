"""Position embeddings (chapter_vit/position-embeddings.md), in both tabs:
without them the encoder cannot see the order of the patches; the fixed
sine-cosine embeddings are big_vision's and the Transformer's numbers; a model
with fixed embeddings keeps them out of its parameters and recomputes them for
another resolution."""
import json

import jax
import numpy as np
import pytest
import torch
from jax import numpy as jnp

from d2l_extras import jax as jax_lib
from d2l_extras import torch as torch_lib
from d2l_extras.run import saved_params

from helpers import LIBS, TAB_IDS, randomize

SMALL = (28, 4, 32, 64, 4, 2, 0.0, 0.0)  # img_size, patch_size, ..., dropouts


def big_vision_posemb_sincos_2d(h, w, width, temperature=10_000.):
    """big_vision's posemb_sincos_2d (models/vit.py), in NumPy, without the
    batch axis."""
    y, x = np.mgrid[:h, :w]
    omega = np.arange(width // 4) / (width // 4 - 1)
    omega = 1. / (temperature ** omega)
    y = np.einsum('m,d->md', y.flatten(), omega)
    x = np.einsum('m,d->md', x.flatten(), omega)
    return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)


@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
@pytest.mark.parametrize('grid_size, width, temperature', [
    ((7, 7), 512, 10000.0), ((3, 5), 64, 10000.0), ((14, 2), 8, 100.0), (4, 96, 1e4)])
def test_sincos_embedding_equals_big_vision(lib, grid_size, width, temperature):
    rows, cols = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
    P = np.asarray(lib.sincos_position_embedding(grid_size, width, temperature))
    assert P.shape == (rows * cols, width)
    np.testing.assert_allclose(P, big_vision_posemb_sincos_2d(rows, cols, width, temperature),
                               atol=2e-6)


@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
def test_2d_embeddings_are_row_by_row_with_the_column_first(lib):
    P = np.asarray(lib.sincos_position_embedding((2, 3), 8))
    quarter = 2
    # position (row 1, column 2) is number 1 * 3 + 2; sin(0) = 0 marks a zero coordinate
    assert np.allclose(P[1 * 3 + 2, :quarter], np.sin([2, 2 / 10000]), atol=1e-7)
    assert np.allclose(P[1 * 3 + 2, 2 * quarter:3 * quarter], np.sin([1, 1 / 10000]), atol=1e-7)
    assert np.allclose(P[2, 2 * quarter:3 * quarter], 0)  # row 0


@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
def test_1d_embeddings_are_d2ls_positional_encoding(lib):
    encoding = torch_lib.d2l_torch.PositionalEncoding(64, 0, max_len=50).eval()
    expected = encoding.P[0].numpy()
    np.testing.assert_allclose(np.asarray(lib.sincos_1d_position_embedding(50, 64)), expected,
                               atol=1e-5)


@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
def test_every_sincos_vector_has_length_sqrt_half_the_width(lib):
    for P in (lib.sincos_position_embedding(7, 512), lib.sincos_1d_position_embedding(49, 512)):
        np.testing.assert_allclose(np.linalg.norm(np.asarray(P), axis=1), 16, rtol=1e-5)


@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
def test_fixed_embeddings_leave_the_class_token_at_zero(lib):
    for posemb in ('sincos2d', 'sincos1d', 'none'):
        P = np.asarray(lib.fixed_position_embedding(posemb, (3, 4), 16, num_prefix_tokens=2))
        assert P.shape == (1, 2 + 12, 16)
        assert not P[0, :2].any()
        assert P[0, 2:].any() == (posemb != 'none')


@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
def test_bad_widths_and_kinds_are_refused_with_the_fix(lib):
    with pytest.raises(ValueError, match='choose a multiple of 4 of at least 8'):
        lib.sincos_position_embedding(7, 30)
    with pytest.raises(ValueError, match='choose a multiple of 4 of at least 8'):
        lib.sincos_position_embedding(7, 4)
    with pytest.raises(ValueError, match='choose a multiple of 2 of at least 4'):
        lib.sincos_1d_position_embedding(7, 5)
    with pytest.raises(ValueError, match=r"posemb must be one of \('learn', 'sincos2d'"):
        lib.fixed_position_embedding('sincos', 7, 16)
    with pytest.raises(ValueError, match='posemb must be one of'):
        torch_lib.ViT(*SMALL, posemb='sin-cos') if lib is torch_lib else \
            jax_lib.ViT(*SMALL, posemb='sin-cos').init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))


def torch_pair(posemb):
    """A PyTorch ViT with random weights everywhere (the head too) and the
    JAX ViT with the same weights."""
    torch.manual_seed(0)
    torch_vit = randomize(torch_lib.ViT(*SMALL, posemb=posemb))
    return torch_vit, jax_lib.ViT(*SMALL, posemb=posemb), jax_lib.params_from_torch(torch_vit)


@pytest.mark.parametrize('posemb', ['none', 'learn'])
def test_without_position_embeddings_a_vit_cannot_tell_an_image_from_its_jigsaw(posemb):
    torch_vit, jax_vit, variables = torch_pair(posemb)
    order = np.random.default_rng(0).permutation(49)
    X = torch.rand(4, 1, 28, 28)
    X_shuffled = torch_lib.shuffle_patches(X, 4, order)
    assert not torch.equal(X, X_shuffled)
    with torch.no_grad():
        change = (torch_vit(X_shuffled) - torch_vit(X)).abs().max()
    X_nhwc = jnp.asarray(X.numpy().transpose(0, 2, 3, 1))
    X_shuffled_nhwc = jax_lib.shuffle_patches(X_nhwc, 4, order)
    np.testing.assert_array_equal(np.asarray(X_shuffled_nhwc),
                                  X_shuffled.numpy().transpose(0, 2, 3, 1))
    jax_change = jnp.abs(jax_vit.apply(variables, X_shuffled_nhwc) -
                         jax_vit.apply(variables, X_nhwc)).max()
    if posemb == 'none':
        assert change < 1e-5 and jax_change < 1e-5
    else:
        assert change > 1e-2 and jax_change > 1e-2


def test_without_position_embeddings_the_blocks_permute_their_outputs_as_their_inputs():
    torch_vit, _, _ = torch_pair('none')
    X = torch.randn(2, 50, 32)
    order = torch.cat((torch.tensor([0]), 1 + torch.randperm(49)))  # the class token stays first
    with torch.no_grad():
        Y, Y_permuted = torch_vit.blks(X), torch_vit.blks(X[:, order])
    torch.testing.assert_close(Y_permuted, Y[:, order], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('posemb', ['sincos2d', 'sincos1d', 'none'])
def test_pytorch_and_jax_give_the_same_logits_with_fixed_embeddings(posemb):
    torch_vit, jax_vit, variables = torch_pair(posemb)
    X = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        expected = torch_vit(X).numpy()
    logits = jax_vit.apply(variables, jnp.asarray(X.numpy().transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-5)
    assert np.abs(expected).max() > 0.1


@pytest.mark.parametrize('posemb', ['sincos2d', 'sincos1d', 'none'])
def test_fixed_embeddings_are_not_parameters(posemb):
    torch_vit = torch_lib.ViT(*SMALL, posemb=posemb)
    assert 'pos_embedding' not in torch_vit.state_dict()
    assert not any(p is torch_vit.pos_embedding for p in torch_vit.parameters())
    params = jax_lib.ViT(*SMALL, posemb=posemb).init(
        jax.random.key(0), jnp.zeros((1, 28, 28, 1)))['params']
    assert 'pos_embedding' not in params
    learned = torch_lib.ViT(*SMALL)
    assert sum(p.numel() for p in learned.parameters()) - \
        sum(p.numel() for p in torch_vit.parameters()) == 50 * 32


def test_a_larger_image_recomputes_fixed_embeddings_for_its_grid():
    torch_vit, jax_vit, variables = torch_pair('sincos2d')
    expected = torch_lib.fixed_position_embedding('sincos2d', (10, 10), 32)
    larger = torch_vit.with_img_size(40)
    torch.testing.assert_close(larger.pos_embedding, expected)
    assert larger(torch.rand(2, 1, 40, 40)).shape == (2, 10)
    jax_larger, jax_params = jax_vit.with_img_size(variables['params'], 40)
    np.testing.assert_allclose(
        np.asarray(jax_larger.bind({'params': jax_params}).pos_embedding), expected.numpy(),
        atol=1e-6)
    with torch.no_grad():
        X = torch.rand(2, 1, 40, 40)
        np.testing.assert_allclose(
            np.asarray(jax_larger.apply({'params': jax_params},
                                        jnp.asarray(X.numpy().transpose(0, 2, 3, 1)))),
            larger(X).numpy(), atol=1e-5)


def test_learned_embeddings_at_their_default_keep_the_saved_settings_of_earlier_files():
    class Data:
        hparams = {'batch_size': 128}

        class arrays:
            name = 'Fashion-MNIST'
    default = json.loads(saved_params.settings_json(torch_lib.ViT(*SMALL).hparams, Data, {}))
    assert 'posemb' not in default['model']  # as files saved before the option existed
    fixed = json.loads(saved_params.settings_json(
        torch_lib.ViT(*SMALL, posemb='sincos2d').hparams, Data, {}))
    assert fixed['model']['posemb'] == 'sincos2d'
