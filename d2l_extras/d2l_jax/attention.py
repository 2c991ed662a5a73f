"""d2l's scaled dot-product and multi-head attention in Flax.

Same names, signatures and return values as ``d2l.jax``: the attention modules
return ``(output, attention_weights)``. The projections use Xavier-uniform
weights and zero biases, as the PyTorch tab's ViT initialises them, so the two
tabs start from the same distribution.
"""
import math

import jax.numpy as jnp
from flax import linen as nn

xavier_uniform = nn.initializers.xavier_uniform()


def masked_softmax(X, valid_lens):
    """Softmax over the last axis, ignoring positions past ``valid_lens``.

    X has shape (batch, queries, keys); valid_lens is None, (batch,) or
    (batch, queries).
    """
    if valid_lens is None:
        return nn.softmax(X, axis=-1)
    if valid_lens.ndim == 1:
        valid_lens = jnp.repeat(valid_lens[:, None], X.shape[1], axis=1)
    mask = jnp.arange(X.shape[-1])[None, None, :] < valid_lens[..., None]
    # A large negative score, not -inf, so a fully masked row stays finite.
    return nn.softmax(jnp.where(mask, X, -1e6), axis=-1)


class DotProductAttention(nn.Module):
    """Scaled dot product attention."""
    dropout: float

    @nn.compact
    def __call__(self, queries, keys, values, valid_lens=None, training=False):
        d = queries.shape[-1]
        scores = queries @ keys.swapaxes(-1, -2) / math.sqrt(d)
        attention_weights = masked_softmax(scores, valid_lens)
        dropped = nn.Dropout(self.dropout, deterministic=not training)(attention_weights)
        return dropped @ values, attention_weights


class MultiHeadAttention(nn.Module):
    """Multi-head attention."""
    num_hiddens: int
    num_heads: int
    dropout: float
    bias: bool = False
    kernel_init: nn.initializers.Initializer = xavier_uniform

    def setup(self):
        if self.num_hiddens % self.num_heads:
            raise ValueError(f'num_hiddens={self.num_hiddens} is not divisible by '
                             f'num_heads={self.num_heads}: every head needs the '
                             'same width')
        self.attention = DotProductAttention(self.dropout)
        dense = lambda: nn.Dense(self.num_hiddens, use_bias=self.bias,
                                 kernel_init=self.kernel_init)
        self.W_q, self.W_k, self.W_v, self.W_o = dense(), dense(), dense(), dense()

    def __call__(self, queries, keys, values, valid_lens, training=False):
        # (batch, steps, num_hiddens) -> (batch * num_heads, steps, head width)
        queries = self.transpose_qkv(self.W_q(queries))
        keys = self.transpose_qkv(self.W_k(keys))
        values = self.transpose_qkv(self.W_v(values))
        if valid_lens is not None:
            valid_lens = jnp.repeat(valid_lens, self.num_heads, axis=0)
        output, attention_weights = self.attention(
            queries, keys, values, valid_lens, training=training)
        return self.W_o(self.transpose_output(output)), attention_weights

    def transpose_qkv(self, X):
        """Transposition for parallel computation of multiple attention heads."""
        X = X.reshape((X.shape[0], X.shape[1], self.num_heads, -1))
        X = X.transpose((0, 2, 1, 3))
        return X.reshape((-1, X.shape[2], X.shape[3]))

    def transpose_output(self, X):
        """Reverse the operation of transpose_qkv."""
        X = X.reshape((-1, self.num_heads, X.shape[1], X.shape[2]))
        X = X.transpose((0, 2, 1, 3))
        return X.reshape((X.shape[0], X.shape[1], -1))
