"""The encoder block in Flax NNX (chapter_vit/vision-transformer.md) is the
linen block: the same parameter tree with the same shapes and initialization
scales, the same outputs for the same weights, and dropout switched by
`train()` and `eval()`."""
import jax
import numpy as np
import pytest
from flax import nnx
from jax import numpy as jnp

from d2l_extras import jax as d2l

WIDTH, MLP_WIDTH, HEADS = 64, 128, 4


def shapes(tree):
    return jax.tree.map(jnp.shape, tree)


def linen_params(block, seed=1):
    """The linen block's parameters with random LayerNorm scales and biases
    (which start at 1 and 0, and would hide a swap)."""
    params = block.init(jax.random.key(seed), jnp.ones((1, 5, WIDTH)))['params']
    keys = iter(jax.random.split(jax.random.key(seed + 1), 32))
    return jax.tree.map(lambda p: p + 0.1 * jax.random.normal(next(keys), p.shape), params)


def load(nnx_block, params):
    """What the page does: the linen parameters into the NNX block's state."""
    state = nnx.state(nnx_block, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(nnx_block, state)
    return nnx_block


@pytest.mark.parametrize('use_bias', [False, True])
def test_the_nnx_block_has_the_linen_blocks_parameter_tree(use_bias):
    linen_block = d2l.ViTBlock(WIDTH, MLP_WIDTH, HEADS, 0.1, use_bias=use_bias)
    nnx_block = d2l.NNXViTBlock(WIDTH, MLP_WIDTH, HEADS, 0.1, use_bias=use_bias,
                                rngs=nnx.Rngs(0))
    assert shapes(nnx.to_pure_dict(nnx.state(nnx_block, nnx.Param))) == shapes(linen_params(linen_block))
    assert ('bias' in nnx.to_pure_dict(nnx.state(nnx_block, nnx.Param))['attention']['qkv']) == use_bias


def test_the_nnx_block_starts_with_the_linen_blocks_initialization():
    # 512 wide, so that each kernel's spread is measured to about 1%
    linen = d2l.ViTBlock(512, 2048, 8, 0.1).init(jax.random.key(0), jnp.ones((1, 5, 512)))['params']
    ours = nnx.to_pure_dict(nnx.state(d2l.NNXViTBlock(512, 2048, 8, 0.1, rngs=nnx.Rngs(1)), nnx.Param))

    def same_scale(path, actual, expected):
        name = jax.tree_util.keystr(path)
        np.testing.assert_allclose(float(actual.std()), float(expected.std()), rtol=0.03, atol=1e-7,
                                   err_msg=name)
        np.testing.assert_allclose(float(actual.mean()), float(expected.mean()), atol=2e-3, err_msg=name)

    jax.tree_util.tree_map_with_path(same_scale, ours, linen)  # also fails unless the trees match
    # Xavier on each (d, d) matrix that qkv stacks, not on the (d, 3d) whole
    assert float(ours['attention']['qkv']['kernel'].std()) == pytest.approx((1 / 512)**0.5, rel=0.03)


@pytest.mark.parametrize('fused', ['never', 'always'])
def test_nnx_and_linen_blocks_compute_the_same_outputs_for_the_same_weights(monkeypatch, fused):
    monkeypatch.setattr(d2l, 'FUSED_ATTENTION', fused)
    linen_block = d2l.ViTBlock(WIDTH, MLP_WIDTH, HEADS, 0.1, use_bias=True)
    params = linen_params(linen_block)
    nnx_block = load(d2l.NNXViTBlock(WIDTH, MLP_WIDTH, HEADS, 0.1, use_bias=True, rngs=nnx.Rngs(0)),
                     params)
    nnx_block.eval()
    X = jax.random.normal(jax.random.key(2), (3, 17, WIDTH))
    expected = linen_block.apply({'params': params}, X)
    assert float(jnp.abs(expected).mean()) > 0.1
    np.testing.assert_allclose(np.asarray(nnx_block(X)), np.asarray(expected), atol=1e-5)


def test_train_and_eval_switch_the_nnx_blocks_dropout():
    linen_block = d2l.ViTBlock(WIDTH, MLP_WIDTH, HEADS, 0.5)
    params = linen_params(linen_block)
    nnx_block = load(d2l.NNXViTBlock(WIDTH, MLP_WIDTH, HEADS, 0.5, rngs=nnx.Rngs(0)), params)
    X = jax.random.normal(jax.random.key(2), (2, 9, WIDTH))
    nnx_block.train()
    first, second = nnx_block(X), nnx_block(X)
    assert float(jnp.abs(first - second).max()) > 0.1, 'dropout draws the same mask twice'
    nnx_block.eval()
    np.testing.assert_array_equal(np.asarray(nnx_block(X)), np.asarray(nnx_block(X)))
    np.testing.assert_allclose(np.asarray(nnx_block(X)),
                               np.asarray(linen_block.apply({'params': params}, X)), atol=1e-5)
