"""Changing the resolution: position embeddings interpolated in 2D, as timm does."""
import jax
import numpy as np
import pytest
import torch
from jax import numpy as jnp
from timm.layers import resample_abs_pos_embed

from d2l_extras import jax as jax_lib
from d2l_extras import torch as torch_lib


@pytest.mark.parametrize('mode', ['bilinear', 'bicubic'])
@pytest.mark.parametrize('old_grid, new_grid', [((6, 6), (8, 8)), ((6, 6), (4, 4)), ((4, 6), (7, 5))])
@pytest.mark.parametrize('num_prefix_tokens', [0, 1])
def test_both_tabs_resize_like_timm(mode, old_grid, new_grid, num_prefix_tokens):
    generator = torch.Generator().manual_seed(0)
    pos = torch.randn(1, num_prefix_tokens + old_grid[0] * old_grid[1], 24, generator=generator)
    expected = resample_abs_pos_embed(pos, list(new_grid), list(old_grid), num_prefix_tokens=num_prefix_tokens,
                                      interpolation=mode, antialias=True).numpy()
    ours = torch_lib.resize_position_embedding(pos, old_grid, new_grid, num_prefix_tokens, mode).numpy()
    theirs = np.asarray(jax_lib.resize_position_embedding(
        jnp.asarray(pos.numpy()), old_grid, new_grid, num_prefix_tokens, mode))
    assert ours.shape == (1, num_prefix_tokens + new_grid[0] * new_grid[1], 24)
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    np.testing.assert_allclose(theirs, expected, atol=1e-5)
    np.testing.assert_array_equal(ours[:, :num_prefix_tokens], pos[:, :num_prefix_tokens].numpy())


def test_a_grid_that_does_not_fit_the_embeddings_is_refused():
    with pytest.raises(ValueError, match='do not fit 1 \\+ a \\(5, 5\\) grid'):
        torch_lib.resize_position_embedding(torch.zeros(1, 37, 8), (5, 5), (8, 8))


@pytest.mark.parametrize('pool', ['cls', 'mean'])
def test_the_resized_pytorch_model_accepts_the_new_size(pool):
    model = torch_lib.ViT(32, 8, 32, 64, 4, 2, 0.1, 0.1, pool=pool).eval()
    larger = model.with_img_size(48).eval()
    assert larger(torch.rand(2, 1, 48, 48)).shape == (2, 10)
    assert larger.pos_embedding.shape[1] == 36 + (pool == 'cls')
    same = model.with_img_size(32).eval()
    X = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(same(X), model(X))


def test_the_resized_jax_model_accepts_the_new_size_and_matches_pytorch():
    torch_model = torch_lib.ViT(32, 8, 32, 64, 4, 2, 0.1, 0.1).eval()
    with torch.no_grad():
        torch_model.head[1].weight.normal_(0, 0.1)
    jax_model = jax_lib.ViT(32, 8, 32, 64, 4, 2, 0.1, 0.1)
    params = jax_lib.params_from_torch(torch_model)['params']
    larger, larger_params = jax_model.with_img_size(params, 48)
    X = torch.rand(2, 1, 48, 48)
    logits = np.asarray(larger.apply({'params': larger_params}, jnp.asarray(X.numpy().transpose(0, 2, 3, 1))))
    with torch.no_grad():
        expected = torch_model.with_img_size(48).eval()(X).numpy()
    assert np.abs(logits - expected).max() < 1e-5
