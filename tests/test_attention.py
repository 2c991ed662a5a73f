"""ViTAttention's two paths compute the same function, in both tabs.

The fused kernels (F.scaled_dot_product_attention, jax.nn.dot_product_attention)
and the explicit softmax(QK^T / sqrt(d))V that the section explains give the
same outputs; the explicit path also returns the attention weights, which are
probability distributions over the tokens and the same in both tabs.
"""
import jax
import numpy as np
import pytest
import torch
from jax import numpy as jnp

from d2l_extras import jax as jax_lib
from d2l_extras import torch as torch_lib

# num_hiddens, num_heads, qkv_bias: heads of width 8, 5, 16 and 64
ATTENTION_CONFIGS = [(40, 5, True), (30, 6, False), (48, 3, True), (512, 8, False)]


def torch_attention(num_hiddens, num_heads, qkv_bias, dropout=0.0):
    torch.manual_seed(0)
    attention = torch_lib.ViTAttention(num_hiddens, num_heads, dropout, qkv_bias)
    with torch.no_grad():  # non-zero biases, so that a misplaced one shows
        for name, p in attention.named_parameters():
            if name.endswith('bias'):
                p.normal_(0, 0.1)
    return attention


@pytest.mark.parametrize('num_hiddens, num_heads, qkv_bias', ATTENTION_CONFIGS)
def test_fused_and_explicit_attention_agree_in_both_tabs(num_hiddens, num_heads, qkv_bias):
    attention = torch_attention(num_hiddens, num_heads, qkv_bias)
    X = torch.randn(2, 17, num_hiddens, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for training in (False, True):  # in training too, with dropout 0
            attention.train(training)
            fused, no_weights = attention(X)
            explicit, weights = attention(X, return_weights=True)
            assert no_weights is None
            assert (fused - explicit).abs().max() < 1e-5
            assert weights.shape == (2, num_heads, 17, 17)
    jax_attention = jax_lib.ViTAttention(num_hiddens, num_heads, 0.0, qkv_bias)
    variables = jax_lib.params_from_torch(attention)
    X_jax = jnp.asarray(X.numpy())
    for training in (False, True):
        jax_fused, jax_no_weights = jax_attention.apply(variables, X_jax, training)
        jax_explicit, jax_weights = jax_attention.apply(variables, X_jax, training,
                                                        return_weights=True)
        assert jax_no_weights is None
        assert np.abs(np.asarray(jax_fused - jax_explicit)).max() < 1e-5
        # and the same as PyTorch, outputs and weights
        assert np.abs(np.asarray(jax_fused) - fused.numpy()).max() < 1e-5
        assert np.abs(np.asarray(jax_weights) - weights.numpy()).max() < 1e-6


def test_attention_weights_are_distributions_over_the_tokens():
    attention = torch_attention(30, 6, True).eval()
    X = 3 * torch.randn(4, 9, 30)
    with torch.no_grad():
        _, weights = attention(X, return_weights=True)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(4, 6, 9))
    assert weights.max() > 0.3  # not the uniform 1/9: the scores matter
    _, jax_weights = jax_lib.ViTAttention(30, 6, 0.0, True).apply(
        jax_lib.params_from_torch(attention), jnp.asarray(X.numpy()), return_weights=True)
    np.testing.assert_allclose(np.asarray(jax_weights).sum(axis=-1), 1, atol=1e-6)


def test_dropout_acts_on_the_attention_in_training_on_both_paths():
    X = torch.randn(2, 9, 30)
    attention = torch_attention(30, 6, True, dropout=0.5).eval()
    with torch.no_grad():
        evaluated, _ = attention(X)
        attention.train()
        for return_weights in (False, True):  # the fused kernel takes dropout_p
            assert (attention(X, return_weights)[0] - evaluated).abs().max() > 1e-3
    # jax.nn.dot_product_attention has no dropout: training takes the explicit path
    jax_attention = jax_lib.ViTAttention(30, 6, 0.5, True)
    variables = jax_lib.params_from_torch(attention)
    X_jax = jnp.asarray(X.numpy())
    evaluated = jax_attention.apply(variables, X_jax)[0]
    trained = [jax_attention.apply(variables, X_jax, True, rngs={'dropout': jax.random.key(k)})[0]
               for k in (1, 2)]
    assert np.abs(np.asarray(trained[0] - evaluated)).max() > 1e-3
    assert np.abs(np.asarray(trained[0] - trained[1])).max() > 1e-3


def test_the_vit_returns_the_attention_weights_of_every_block():
    torch_vit = torch_lib.ViT(32, 8, 40, 64, 5, 3, 0.1, 0.1, use_bias=True, num_channels=3).eval()
    with torch.no_grad():
        torch_vit.head[1].weight.normal_(0, 0.1)  # the zero head would hide a difference
    X = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        logits = torch_vit(X)
        logits_too, weights = torch_vit(X, return_weights=True)
    assert (logits - logits_too).abs().max() < 1e-5
    assert len(weights) == 3 and all(w.shape == (2, 5, 17, 17) for w in weights)  # 16 patches + cls
    jax_vit = jax_lib.ViT(32, 8, 40, 64, 5, 3, 0.1, 0.1, use_bias=True, num_channels=3)
    jax_logits, jax_weights = jax.jit(jax_vit.apply, static_argnames='return_weights')(
        jax_lib.params_from_torch(torch_vit), jnp.asarray(X.numpy().transpose(0, 2, 3, 1)),
        return_weights=True)
    assert np.abs(np.asarray(jax_logits) - logits.numpy()).max() < 1e-5
    assert len(jax_weights) == 3
    for w, jax_w in zip(weights, jax_weights):
        assert np.abs(np.asarray(jax_w) - w.numpy()).max() < 1e-6
    mean_vit = torch_lib.ViT(32, 8, 40, 64, 5, 2, 0.1, 0.1, pool='mean').eval()
    with torch.no_grad():
        assert mean_vit(torch.rand(2, 1, 32, 32), return_weights=True)[1][0].shape == (2, 5, 16, 16)


def test_blocks_give_back_their_weights_on_request():
    block = torch_lib.ViTBlock(24, 48, 4, 0.0).eval()
    X = torch.randn(2, 5, 24)
    with torch.no_grad():
        Y = block(X)
        Y_too, weights = block(X, return_weights=True)
    assert Y.shape == (2, 5, 24) and (Y - Y_too).abs().max() < 1e-5
    assert weights.shape == (2, 4, 5, 5)  # JAX blocks: through the ViT test above


def test_attention_dropout_acts_on_the_attention_weights():
    """In training, the PyTorch tab's attention is dropout(softmax(QK^T /
    sqrt(d))) V, as in d2l: the mask that nn.Dropout draws on the weights from
    the same seed gives the same output (on a CPU this is the explicit path)."""
    attention = torch_attention(40, 5, True, dropout=0.5).train()
    X = torch.randn(2, 17, 40, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.manual_seed(7)
        output, _ = attention(X)
        Q, K, V = attention.qkv(X).reshape(2, 17, 3, 5, 8).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(Q @ K.transpose(2, 3) / 8**0.5, dim=-1)
        torch.manual_seed(7)
        H = torch.nn.functional.dropout(weights, 0.5) @ V
        expected = attention.proj(H.transpose(1, 2).reshape(2, 17, 40))
    assert (output - expected).abs().max() < 1e-5
    # and dropout did act: the output differs from evaluation mode's
    assert (output - attention.eval()(X)[0]).abs().max() > 1e-2


@pytest.mark.parametrize('setting, training, fused', [
    ('auto', False, True), ('auto', True, False),  # dropout on a CPU: explicit
    ('always', True, True), ('never', False, False)])
def test_one_switch_of_the_library_chooses_the_fused_kernel(monkeypatch, setting, training, fused):
    calls = []
    kernels = [(torch.nn.functional, 'scaled_dot_product_attention'),
               (jax.nn, 'dot_product_attention')]
    for module, name in kernels:
        kernel = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, kernel=kernel, **k: calls.append(1) or kernel(*a, **k))
    monkeypatch.setattr(torch_lib, 'FUSED_ATTENTION', setting)
    monkeypatch.setattr(jax_lib, 'FUSED_ATTENTION', setting)
    attention = torch_attention(30, 6, True, dropout=0.5).train(training)
    with torch.no_grad():
        _, weights = attention(torch.randn(2, 9, 30))
    assert (weights is None) == fused and len(calls) == fused  # the explicit path has them
    # JAX's kernel has no dropout: in training with dropout, always explicit
    calls.clear()
    jax_lib.ViTAttention(30, 6, 0.5, True).init_with_output(
        {'params': jax.random.key(0), 'dropout': jax.random.key(1)}, jnp.ones((2, 9, 30)), training)
    assert len(calls) == (fused and not training)


def test_the_switch_refuses_a_setting_it_does_not_know(monkeypatch):
    for lib, args in ((torch_lib, (0.0, torch.device('cpu'))), (jax_lib, (0.0,))):
        monkeypatch.setattr(lib, 'FUSED_ATTENTION', 'yes')
        with pytest.raises(ValueError, match="'auto', 'always' or 'never'"):
            lib.use_fused_attention(*args)
