"""The PyTorch and JAX models are the same function: same weights, same logits."""
import jax
import numpy as np
import pytest
import torch
from jax import numpy as jnp

from d2l_extras import jax as jax_lib
from d2l_extras import torch as torch_lib

from helpers import randomize


def nhwc(X):
    return jnp.asarray(X.numpy().transpose(0, 2, 3, 1))


def jax_logits(jax_model, variables, X_nhwc):
    # Compiled as a whole, as in training: a few times faster here than op by op
    return np.asarray(jax.jit(jax_model.apply)(variables, X_nhwc))


CONFIGS = [
    # img_size, patch_size, num_hiddens, mlp_num_hiddens, num_heads, num_blks, use_bias, num_channels
    (96, 16, 512, 2048, 8, 2, False, 1),  # the section's model
    (32, 4, 48, 96, 3, 1, True, 3),  # 3 heads of width 16
    (28, 7, 36, 20, 4, 3, False, 1),  # MLP narrower than the width
    (8, 2, 40, 64, 5, 4, True, 3),  # patch 2, 5 heads of width 8, depth 4
    (32, 16, 30, 60, 6, 2, True, 1),  # 6 heads of width 5
    (8, 2, 40, 64, 5, 4, False, 3),  # as above, without the q/k/v biases
    (32, 16, 30, 60, 6, 2, False, 1),
]


def build_pair(config, pool='cls'):
    img_size, patch_size, num_hiddens, mlp, heads, blks, use_bias, channels = config
    args = (img_size, patch_size, num_hiddens, mlp, heads, blks, 0.1, 0.1)
    kwargs = dict(use_bias=use_bias, num_channels=channels, pool=pool)
    return torch_lib.ViT(*args, **kwargs), jax_lib.ViT(*args, **kwargs)


@pytest.mark.parametrize('config, pool', [(c, 'cls') for c in CONFIGS] +
                         [(c, 'mean') for c in CONFIGS[:2]])
def test_pytorch_and_jax_vits_give_the_same_logits(config, pool):
    torch_vit, jax_vit = build_pair(config, pool)
    randomize(torch_vit)
    channels, img_size = config[7], config[0]
    X = torch.rand(4, channels, img_size, img_size)
    with torch.no_grad():
        expected = torch_vit(X).numpy()
    variables = jax_lib.params_from_torch(torch_vit)
    logits = jax_logits(jax_vit, variables, nhwc(X))
    assert np.abs(logits - expected).max() < 1e-5
    assert np.abs(expected).max() > 0.5  # a real signal, not two zero outputs


@pytest.mark.parametrize('config, pool', [(c, 'cls') for c in CONFIGS] + [(CONFIGS[3], 'mean')])
def test_jax_weights_copied_into_pytorch_give_the_same_logits(config, pool):
    torch_vit, jax_vit = build_pair(config, pool)
    channels, img_size = config[7], config[0]
    X = torch.rand(4, channels, img_size, img_size)
    variables = jax.jit(jax_vit.init)(jax.random.key(0), nhwc(X))
    head = variables['params']['head']['layers_1']  # zero-initialized: make it count
    head['kernel'] = 0.1 * jax.random.normal(jax.random.key(1), head['kernel'].shape)
    jax_lib.params_to_torch(variables, torch_vit).eval()
    with torch.no_grad():
        torch_logits = torch_vit(X).numpy()
    assert np.abs(jax_logits(jax_vit, variables, nhwc(X)) - torch_logits).max() < 1e-5


@pytest.mark.parametrize('config', CONFIGS[1:3])
def test_pytorch_to_jax_to_pytorch_is_the_identity(config):
    source, _ = build_pair(config)
    target, _ = build_pair(config)
    jax_lib.params_to_torch(jax_lib.params_from_torch(randomize(source)), target)
    for (name, a), (_, b) in zip(source.state_dict().items(), target.state_dict().items()):
        assert torch.equal(a, b), name


def test_converting_between_different_configurations_is_refused():
    small, _ = build_pair(CONFIGS[1])
    other_depth, _ = build_pair(CONFIGS[1][:5] + (2,) + CONFIGS[1][6:])
    with pytest.raises(ValueError, match='same configuration'):
        jax_lib.params_to_torch(jax_lib.params_from_torch(other_depth), small)
    with pytest.raises(ValueError, match='same configuration'):
        jax_lib.params_to_torch(jax_lib.params_from_torch(small), other_depth)
    wider, _ = build_pair((32, 4, 96, 96, 3, 1, True, 3))
    with pytest.raises(ValueError, match='same configuration'):
        jax_lib.params_to_torch(jax_lib.params_from_torch(wider), small)


def test_converted_variables_have_exactly_the_flax_structure():
    torch_vit = torch_lib.ViT(32, 8, 32, 64, 4, 2, 0.1, 0.1, use_bias=True)
    jax_vit = jax_lib.ViT(32, 8, 32, 64, 4, 2, 0.1, 0.1, use_bias=True)
    initialized = jax_vit.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
    shapes = lambda tree: jax.tree.map(np.shape, tree)
    assert shapes(jax_lib.params_from_torch(torch_vit)) == shapes(initialized)


def test_encoder_block_parity_with_bias():
    torch_blk = torch_lib.ViTBlock(24, 40, 3, 0.5, use_bias=True)
    X = torch.randn(2, 7, 24)
    torch_blk(X)  # builds the lazy layers
    randomize(torch_blk)
    with torch.no_grad():
        expected = torch_blk(X).numpy()
    jax_blk = jax_lib.ViTBlock(24, 40, 3, 0.5, use_bias=True)
    out = jax_blk.apply(jax_lib.params_from_torch(torch_blk), jnp.asarray(X.numpy()))
    assert np.abs(np.asarray(out) - expected).max() < 1e-5


def test_jax_apply_is_deterministic_by_default_and_dropout_works_in_training():
    jax_vit = jax_lib.ViT(32, 8, 32, 64, 4, 1, 0.5, 0.5)
    X = jnp.ones((2, 32, 32, 1))
    variables = jax_vit.init(jax.random.key(0), X)
    np.testing.assert_array_equal(jax_vit.apply(variables, X), jax_vit.apply(variables, X))
    head = variables['params']['head']['layers_1']
    head['kernel'] = jnp.ones_like(head['kernel'])  # the zero head would hide dropout
    train1 = jax_vit.apply(variables, X, training=True, rngs={'dropout': jax.random.key(1)})
    train2 = jax_vit.apply(variables, X, training=True, rngs={'dropout': jax.random.key(2)})
    assert not np.allclose(train1, train2)
