"""Shapes and initialization of every module, in both frameworks."""
import jax
import numpy as np
import pytest
import torch
from jax import numpy as jnp

from d2l_extras import jax as jax_lib
from d2l_extras import torch as torch_lib


def test_vit_mlp_shapes():
    mlp = torch_lib.ViTMLP(48, 16, 0.5).eval()
    assert mlp(torch.ones(2, 5, 16)).shape == (2, 5, 16)
    y, _ = jax_lib.ViTMLP(48, 16, 0.5).init_with_output(jax.random.key(0), jnp.ones((2, 5, 16)))
    assert y.shape == (2, 5, 16)


def test_vit_mlp_uses_exact_gelu_in_both_tabs():
    torch_mlp = torch_lib.ViTMLP(8, 4, 0.0).eval()
    X = torch.randn(3, 4)
    with torch.no_grad():
        expected = torch_mlp(X).numpy()
    out = jax_lib.ViTMLP(8, 4, 0.0).apply(jax_lib.params_from_torch(torch_mlp), jnp.asarray(X.numpy()))
    assert np.abs(np.asarray(out) - expected).max() < 1e-6


def test_vit_block_keeps_the_shape():
    blk = torch_lib.ViTBlock(32, 64, 4, 0.5).eval()
    assert blk(torch.ones(2, 37, 32)).shape == (2, 37, 32)
    y, _ = jax_lib.ViTBlock(32, 64, 4, 0.5).init_with_output(jax.random.key(0), jnp.ones((2, 37, 32)))
    assert y.shape == (2, 37, 32)


def test_heads_must_divide_the_width():
    with pytest.raises(ValueError, match='not divisible by num_heads'):
        torch_lib.ViTBlock(30, 64, 4, 0.5)
    with pytest.raises(ValueError, match='not divisible by num_heads'):
        jax_lib.ViTBlock(30, 64, 4, 0.5).init(jax.random.key(0), jnp.ones((1, 5, 30)))


@pytest.mark.parametrize('num_classes', [10, 3])
def test_vit_outputs_one_score_per_class(num_classes):
    model = torch_lib.ViT(96, 16, 64, 128, 4, 2, 0.1, 0.1, num_classes=num_classes).eval()
    assert model(torch.ones(5, 1, 96, 96)).shape == (5, num_classes)
    jax_model = jax_lib.ViT(96, 16, 64, 128, 4, 2, 0.1, 0.1, num_classes=num_classes)
    y, _ = jax_model.init_with_output(jax.random.key(0), jnp.ones((5, 96, 96, 1)))
    assert y.shape == (5, num_classes)


def test_both_tabs_initialize_the_same_way():
    """Class token 0, position embedding std 0.02, head 0, Xavier elsewhere."""
    torch.manual_seed(0)
    model = torch_lib.ViT(96, 8, 256, 512, 8, 1, 0.1, 0.1)
    jax_params = jax_lib.ViT(96, 8, 256, 512, 8, 1, 0.1, 0.1).init(
        jax.random.key(0), jnp.zeros((1, 96, 96, 1)))['params']
    torch_params = jax_lib.params_from_torch(model)['params']
    for params in (torch_params, jax_params):
        assert np.all(np.asarray(params['cls_token']) == 0)
        assert np.std(params['pos_embedding']) == pytest.approx(0.02, rel=0.05)
        assert np.all(np.asarray(params['head']['layers_1']['kernel']) == 0)
        # Xavier-uniform on the (64 * 1, 256) patch projection: std sqrt(2 / (64 + 256))
        kernel = np.asarray(params['patch_embedding']['conv']['kernel'])
        assert np.std(kernel) == pytest.approx(np.sqrt(2 / (64 + 256)), rel=0.05)
        mlp = np.asarray(params['blks_0']['mlp']['dense1']['kernel'])
        assert np.std(mlp) == pytest.approx(np.sqrt(2 / (256 + 512)), rel=0.05)
        # The (256, 3 * 256) qkv kernel is Xavier on each of its three (256, 256)
        # matrices, as three separate layers would be (Xavier on the whole
        # kernel would give std sqrt(2 / (256 + 768)) instead)
        qkv = np.asarray(params['blks_0']['attention']['qkv']['kernel'])
        assert qkv.shape == (256, 768)
        for W in np.split(qkv, 3, axis=1):
            assert np.std(W) == pytest.approx(np.sqrt(2 / (256 + 256)), rel=0.05)
            assert np.abs(W).max() <= np.sqrt(6 / (256 + 256))
        proj = np.asarray(params['blks_0']['attention']['proj']['kernel'])
        assert np.std(proj) == pytest.approx(np.sqrt(2 / (256 + 256)), rel=0.05)
        assert np.all(np.asarray(params['blks_0']['attention']['proj']['bias']) == 0)
        assert 'bias' not in params['blks_0']['attention']['qkv']  # use_bias=False


def test_untrained_vit_predicts_the_uniform_distribution():
    model = torch_lib.ViT(32, 8, 32, 64, 4, 1, 0.0, 0.0).eval()
    X, y = torch.rand(6, 1, 32, 32), torch.arange(6)
    assert model.loss(model(X), y).item() == pytest.approx(np.log(10), abs=1e-6)


def test_jax_vit_reads_its_own_embedding_dropout():
    """d2l's JAX ViT read a global emb_dropout; ours must use its field."""
    X = jnp.ones((2, 32, 32, 1))
    no_dropout = jax_lib.ViT(32, 8, 32, 64, 4, 1, emb_dropout=0.0, blk_dropout=0.0)
    variables = no_dropout.init(jax.random.key(0), X)
    variables['params']['head']['layers_1']['kernel'] += 1.0
    rngs = {'dropout': jax.random.key(1)}
    np.testing.assert_allclose(no_dropout.apply(variables, X, training=True, rngs=rngs),
                               no_dropout.apply(variables, X), atol=1e-6)
    emb_only = jax_lib.ViT(32, 8, 32, 64, 4, 1, emb_dropout=0.5, blk_dropout=0.0)
    assert not np.allclose(emb_only.apply(variables, X, training=True, rngs=rngs),
                           emb_only.apply(variables, X))


@pytest.mark.parametrize('pool, num_tokens', [('cls', 37), ('mean', 36)])
def test_pooling_choice_sets_the_tokens_and_the_output(pool, num_tokens):
    model = torch_lib.ViT(96, 16, 64, 128, 4, 1, 0.1, 0.1, pool=pool).eval()
    assert model(torch.ones(3, 1, 96, 96)).shape == (3, 10)
    assert model.pos_embedding.shape == (1, num_tokens, 64)
    assert hasattr(model, 'cls_token') is (pool == 'cls')
    jax_model = jax_lib.ViT(96, 16, 64, 128, 4, 1, 0.1, 0.1, pool=pool)
    y, variables = jax_model.init_with_output(jax.random.key(0), jnp.ones((3, 96, 96, 1)))
    assert y.shape == (3, 10)
    assert variables['params']['pos_embedding'].shape == (1, num_tokens, 64)
    assert ('cls_token' in variables['params']) is (pool == 'cls')


def test_mean_pooling_has_no_class_token_parameter():
    names = [name for name, _ in torch_lib.ViT(32, 8, 32, 64, 4, 1, 0.0, 0.0, pool='mean').named_parameters()]
    assert not [name for name in names if 'cls' in name]


def test_unknown_pooling_is_refused():
    with pytest.raises(ValueError, match="pool must be 'cls' or 'mean'"):
        torch_lib.ViT(32, 8, 32, 64, 4, 1, 0.0, 0.0, pool='max')
    with pytest.raises(ValueError, match="pool must be 'cls' or 'mean'"):
        jax_lib.ViT(32, 8, 32, 64, 4, 1, 0.0, 0.0, pool='max').init(
            jax.random.key(0), jnp.ones((1, 32, 32, 1)))
