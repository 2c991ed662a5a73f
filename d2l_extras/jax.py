"""The chapter's JAX library, used as ``from d2l_extras import jax as d2l``.

d2l 1.0.3's own JAX module imports TensorFlow, fails on current JAX and breaks
on Python 3.12, so this module provides the parts of its API the chapter uses,
with the same names and signatures. The part above the WARNING marker is
written by hand; the part below is the chapter's ``#@save`` code, written by
``d2lbook build lib``.
"""
import sys
import time

import jax
import numpy as np
import optax
from flax import linen as nn
from jax import numpy as jnp

from d2l_extras import quick_mode
from d2l_extras.fashion_mnist_data import FashionMNISTBatches
from d2l_extras.flax_attention import DotProductAttention, MultiHeadAttention, masked_softmax
from d2l_extras.flax_training import (Classifier, DataModule, HyperParameters, Module,
                                      Trainer, TrainState, get_key, get_seed)
from d2l_extras.image_checks import check_image_batch, check_position_grid, patch_grid
from d2l_extras.plotting import (ProgressBoard, plot, plt, set_axes, set_figsize,
                                 show_images, use_svg_display)
from d2l_extras.torch_to_flax import params_from_torch, params_to_torch

d2l = sys.modules[__name__]


def add_to_class(Class):
    """Register functions as methods in created class."""
    def wrapper(obj):
        setattr(Class, obj.__name__, obj)
    return wrapper


def num_gpus():
    """Return the number of available GPUs."""
    try:
        return len(jax.devices('gpu'))
    except RuntimeError:  # no GPU backend
        return 0


def run_size(max_epochs, verbose=True, quick_max_epochs=quick_mode.QUICK_MAX_EPOCHS):
    """Epochs and examples for a training cell: quick mode on a machine
    without an accelerator unless D2L_VIT_QUICK says otherwise (see quick_mode)."""
    return quick_mode.run_size(max_epochs, jax.default_backend() != 'cpu', verbose,
                               quick_max_epochs)


class FashionMNIST(FashionMNISTBatches, DataModule):
    """Fashion-MNIST as NHWC float arrays in [0, 1], with an offline stand-in
    and an optional ``augment(images, rng)`` for the training images."""
    channels_last = True

    def __init__(self, batch_size=64, resize=(28, 28), root=None,
                 num_train=None, num_val=None, augment=None):
        super().__init__()
        self.save_hyperparameters()
        self.load(root, num_train, num_val)

#################   WARNING   ################
# The below part is generated automatically through:
#    d2lbook build lib
# Don't edit it directly

class PatchEmbedding(nn.Module):
    """Cut images into patches and embed each patch linearly.

    Defined in :numref:`sec_vision-transformer`"""
    img_size: int = 96
    patch_size: int = 16
    num_hiddens: int = 512
    num_channels: int = 1

    def setup(self):
        self.img_hw, patch_size, self.grid_size = patch_grid(self.img_size,
                                                             self.patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        # padding='VALID': only whole patches, exactly as in PyTorch.
        # Xavier on the kernel viewed as a (p * p * in, out) matrix.
        xavier_linear = nn.initializers.variance_scaling(
            1.0, 'fan_avg', 'uniform', in_axis=(0, 1, 2), out_axis=-1)
        self.conv = nn.Conv(self.num_hiddens, kernel_size=patch_size,
                            strides=patch_size, padding='VALID',
                            kernel_init=xavier_linear)

    def __call__(self, X):
        check_image_batch(X.shape, self.num_channels, self.img_hw,
                          channels_last=True)
        X = self.conv(X)
        # Output shape: (batch size, no. of patches, num_hiddens)
        return X.reshape((X.shape[0], -1, X.shape[3]))

def patchify(X, patch_size):
    """Cut NHWC images into patches, each flattened into one vector.

    Defined in :numref:`sec_vision-transformer`"""
    # Output shape: (batch size, no. of patches, patch_size**2 * channels)
    batch, height, width, channels = X.shape
    X = X.reshape(batch, height // patch_size, patch_size,
                  width // patch_size, patch_size, channels)
    X = X.transpose(0, 1, 3, 2, 4, 5)  # grid row, grid col, row, col, channel
    return X.reshape(batch, -1, patch_size**2 * channels)

class ViTMLP(nn.Module):
    """The MLP of a ViT encoder block.

    Defined in :numref:`sec_vision-transformer`"""
    mlp_num_hiddens: int
    mlp_num_outputs: int
    dropout: float = 0.5

    def setup(self):
        init = nn.initializers.xavier_uniform()
        self.dense1 = nn.Dense(self.mlp_num_hiddens, kernel_init=init)
        self.dense2 = nn.Dense(self.mlp_num_outputs, kernel_init=init)
        self.dropout1 = nn.Dropout(self.dropout)
        self.dropout2 = nn.Dropout(self.dropout)

    def __call__(self, x, training=False):
        # The exact GELU, as PyTorch's nn.GELU (Flax defaults to a tanh
        # approximation)
        x = self.dropout1(nn.gelu(self.dense1(x), approximate=False),
                          deterministic=not training)
        return self.dropout2(self.dense2(x), deterministic=not training)

class ViTAttention(nn.Module):
    """Multi-head self-attention; one linear layer makes Q, K and V.

    Defined in :numref:`sec_vision-transformer`"""
    num_hiddens: int
    num_heads: int
    dropout: float
    qkv_bias: bool = False

    def setup(self):
        if self.num_hiddens % self.num_heads:
            raise ValueError(f'num_hiddens={self.num_hiddens} is not divisible '
                             f'by num_heads={self.num_heads}: every head needs '
                             'the same width')
        # Xavier on each of the three (d, d) matrices that qkv stacks
        xavier = nn.initializers.variance_scaling(
            1.0, 'fan_avg', 'uniform', in_axis=0, out_axis=2, batch_axis=1)
        qkv_init = lambda key, shape, dtype=jnp.float32: xavier(
            key, (shape[0], 3, shape[1] // 3), dtype).reshape(shape)
        self.qkv = nn.Dense(3 * self.num_hiddens, use_bias=self.qkv_bias,
                            kernel_init=qkv_init)
        self.attention_dropout = nn.Dropout(self.dropout)
        self.proj = nn.Dense(self.num_hiddens,
                             kernel_init=nn.initializers.xavier_uniform())

    def __call__(self, X, training=False, return_weights=False):
        batch_size, num_steps, num_hiddens = X.shape
        # Shape of Q, K, V: (batch size, no. of tokens, num_heads, head width)
        Q, K, V = self.qkv(X).reshape(batch_size, num_steps, 3, self.num_heads,
                                      -1).transpose(2, 0, 1, 3, 4)
        if return_weights or (training and self.dropout > 0):
            # softmax(Q K^T / sqrt(head width)) V, step by step; the weights
            # have shape (batch size, num_heads, no. of queries, no. of keys)
            scores = jnp.einsum('bqhd,bkhd->bhqk', Q, K) / Q.shape[-1]**0.5
            weights = nn.softmax(scores, axis=-1)
            H = jnp.einsum('bhqk,bkhd->bqhd', self.attention_dropout(
                weights, deterministic=not training), V)
        else:  # The same in one fused kernel, which keeps no weights
            weights = None
            H = jax.nn.dot_product_attention(Q, K, V)
        # Concatenate the heads: (batch size, no. of tokens, num_hiddens)
        H = H.reshape(batch_size, num_steps, num_hiddens)
        return self.proj(H), weights

class ViTBlock(nn.Module):
    """A pre-normalization Transformer encoder block.

    Defined in :numref:`sec_vision-transformer`"""
    num_hiddens: int
    mlp_num_hiddens: int
    num_heads: int
    dropout: float
    use_bias: bool = False

    def setup(self):
        self.ln1 = nn.LayerNorm(epsilon=1e-6)
        self.attention = ViTAttention(self.num_hiddens, self.num_heads,
                                      self.dropout, qkv_bias=self.use_bias)
        self.ln2 = nn.LayerNorm(epsilon=1e-6)
        self.mlp = ViTMLP(self.mlp_num_hiddens, self.num_hiddens, self.dropout)

    def __call__(self, X, training=False, return_weights=False):
        Y, weights = self.attention(self.ln1(X), training, return_weights)
        X = X + Y
        X = X + self.mlp(self.ln2(X), training=training)
        return (X, weights) if return_weights else X

class ViT(d2l.Classifier):
    """Vision Transformer.

    Defined in :numref:`sec_vision-transformer`"""
    img_size: int
    patch_size: int
    num_hiddens: int
    mlp_num_hiddens: int
    num_heads: int
    num_blks: int
    emb_dropout: float
    blk_dropout: float
    lr: float = 0.1
    use_bias: bool = False
    num_classes: int = 10
    num_channels: int = 1
    pool: str = 'cls'

    def setup(self):
        if self.pool not in ('cls', 'mean'):
            raise ValueError(f"pool must be 'cls' or 'mean', got {self.pool!r}")
        self.patch_embedding = PatchEmbedding(self.img_size, self.patch_size,
                                              self.num_hiddens,
                                              self.num_channels)
        _, _, grid_size = patch_grid(self.img_size, self.patch_size)
        num_steps = grid_size[0] * grid_size[1]
        if self.pool == 'cls':
            self.cls_token = self.param('cls_token', nn.initializers.zeros,
                                        (1, 1, self.num_hiddens))
            num_steps += 1
        self.pos_embedding = self.param(
            'pos_embedding', nn.initializers.normal(stddev=0.02),
            (1, num_steps, self.num_hiddens))
        self.dropout = nn.Dropout(self.emb_dropout)
        self.blks = [ViTBlock(self.num_hiddens, self.mlp_num_hiddens,
                              self.num_heads, self.blk_dropout, self.use_bias)
                     for _ in range(self.num_blks)]
        self.head = nn.Sequential([
            nn.LayerNorm(epsilon=1e-6),
            nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros)])

    def __call__(self, X, training=False, return_weights=False):
        X = self.patch_embedding(X)
        if self.pool == 'cls':
            cls_tokens = jnp.broadcast_to(self.cls_token,
                                          (X.shape[0], 1, self.num_hiddens))
            X = jnp.concatenate((cls_tokens, X), axis=1)
        X = self.dropout(X + self.pos_embedding, deterministic=not training)
        attention_weights = []
        for blk in self.blks:
            if return_weights:
                X, weights = blk(X, training, return_weights=True)
                attention_weights.append(weights)
            else:
                X = blk(X, training)
        Y = self.head(X[:, 0] if self.pool == 'cls' else X.mean(axis=1))
        return (Y, attention_weights) if return_weights else Y

    def with_img_size(self, params, img_size, mode='bicubic'):
        """A copy of the model for another image size, and its parameters.
    
        Defined in :numref:`sec_vision-transformer`"""
        model = self.clone(img_size=img_size)
        params = dict(params, pos_embedding=resize_position_embedding(
            params['pos_embedding'], patch_grid(self.img_size, self.patch_size)[2],
            patch_grid(img_size, self.patch_size)[2], int(self.pool == 'cls'),
            mode))
        return model, params

def evaluate_accuracy(model, params, data):
    """The fraction of validation examples that the model classifies right.

    Defined in :numref:`sec_vision-transformer`"""
    predict = jax.jit(lambda X: model.apply({'params': params}, X).argmax(1))
    correct = total = 0
    for X, y in data.val_dataloader():
        correct += int((predict(X) == y).sum())
        total += len(y)
    return correct / total

def resize_position_embedding(pos_embedding, old_grid, new_grid,
                              num_prefix_tokens=1, mode='bicubic'):
    """Interpolate position embeddings to a new grid of patches in 2D.

    Defined in :numref:`sec_vision-transformer`"""
    check_position_grid(pos_embedding.shape[1], num_prefix_tokens, old_grid)
    prefix = pos_embedding[:, :num_prefix_tokens]
    # (1, h * w, d) -> (1, h, w, d): an image with d channels
    grid = pos_embedding[:, num_prefix_tokens:].reshape(
        1, old_grid[0], old_grid[1], -1)
    method = {'bilinear': 'linear', 'bicubic': 'cubic'}[mode]
    grid = jax.image.resize(grid, (1, *new_grid, grid.shape[-1]), method,
                            antialias=True)
    return jnp.concatenate(
        (prefix, grid.reshape(1, new_grid[0] * new_grid[1], -1)), axis=1)

def plot_runs(boards, labels=('val_loss', 'val_acc'), figsize=(7, 2.5)):
    """Plot the curves `labels` of several training runs, one panel each.

    Defined in :numref:`sec_vit-exercise-pooling`"""
    d2l.use_svg_display()
    _, axes = d2l.plt.subplots(1, len(labels), figsize=figsize)
    for axis, label in zip(axes, labels):
        for (name, board), style in zip(boards.items(), ('-o', '--s', ':^')):
            x, y = zip(*board.data[label])
            axis.plot(x, y, style, label=name)
        axis.set_xlabel('epoch')
        axis.set_ylabel(label.replace('_', ' '))
        axis.grid()
        axis.legend()
    d2l.plt.tight_layout()

def vit_step_flops(img_size, patch_size, num_hiddens, mlp_num_hiddens,
                   num_blks, batch_size, num_channels=1, num_classes=10):
    """Predicted FLOPs of one training step: (linear part, attention part).

    Defined in :numref:`sec_vit-exercise-image-size`"""
    num_patches = (img_size // patch_size) ** 2
    num_tokens = num_patches + 1  # and the class token
    patch_embedding = 2 * num_patches * num_channels * patch_size**2 * num_hiddens
    per_token = 2 * (4 * num_hiddens**2 + 2 * num_hiddens * mlp_num_hiddens)
    head = 2 * num_hiddens * num_classes
    linear = patch_embedding + num_blks * per_token * num_tokens + head
    attention = num_blks * 2 * (2 * num_tokens**2 * num_hiddens)
    # Backward costs about twice the forward pass
    return 3 * batch_size * linear, 3 * batch_size * attention

def time_training_step(model, X, y, num_repeats=5):
    """Compile seconds, and seconds of `num_repeats` jitted steps after a warm-up.

    Defined in :numref:`sec_vit-exercise-image-size`"""
    trainer = d2l.Trainer(max_epochs=1, gradient_clip_val=1)
    trainer.prepare_model(model)
    state = trainer.init_state(model, jax.random.key(0), batch=(X, y))
    start = time.perf_counter()
    train_step = trainer.make_train_step().lower(state, (X, y)).compile()
    compile_seconds = time.perf_counter() - start
    state, loss = jax.block_until_ready(train_step(state, (X, y)))
    times = []
    for _ in range(num_repeats):
        start = time.perf_counter()
        state, loss = jax.block_until_ready(train_step(state, (X, y)))
        times.append(time.perf_counter() - start)
    return compile_seconds, np.array(times)

def fit_step_cost(num_tokens, seconds):
    """Fit seconds = c0 + c1 * T + c2 * T**2 with c0, c1, c2 >= 0 (relative error).

    Defined in :numref:`sec_vit-exercise-image-size`"""
    from scipy.optimize import nnls
    T = np.asarray(num_tokens, dtype=float)
    seconds = np.asarray(seconds, dtype=float)
    # Scale the columns to [0, 1] for a well-conditioned problem
    scale = np.array([1.0, T.max(), T.max() ** 2])
    features = np.stack([np.ones_like(T), T, T ** 2], axis=1) / scale
    # Dividing each row by its time fits the relative error
    coefficients, _ = nnls(features / seconds[:, None], np.ones_like(seconds))
    return coefficients / scale

class TunedViT(d2l.ViT):
    """The chapter's ViT with AdamW and a schedule, and label smoothing.

    Defined in :numref:`sec_vit-exercise-accuracy`"""
    adamw: bool = False
    weight_decay: float = 0.05
    warmup: float = 0.1
    label_smoothing: float = 0.0

    def loss(self, params, X, Y, state, averaged=True):
        Y_hat, updates = self.forward_logits(params, X, state)
        Y_hat = Y_hat.reshape((-1, Y_hat.shape[-1]))
        targets = optax.smooth_labels(
            jax.nn.one_hot(Y.reshape(-1), Y_hat.shape[-1]), self.label_smoothing)
        losses = optax.softmax_cross_entropy(Y_hat, targets)
        return (losses.mean() if averaged else losses), updates

    def configure_optimizers(self):
        if not self.adamw:
            return super().configure_optimizers()
        total_steps = self.trainer.max_epochs * self.trainer.num_train_batches
        schedule = optax.warmup_cosine_decay_schedule(
            0.0, self.lr, round(self.warmup * total_steps), total_steps)
        return optax.adamw(schedule, weight_decay=self.weight_decay)

def shift_and_flip(images, rng, max_shift=0.07):
    """Shift (N, H, W) images by up to max_shift of their side; flip half.

    Defined in :numref:`sec_vit-exercise-accuracy`"""
    num_images, height, width = images.shape
    shift = max(round(max_shift * width), 1)
    padded = np.pad(images, ((0, 0), (shift, shift), (shift, shift)))
    rows, cols = rng.integers(0, 2 * shift + 1, (2, num_images))
    shifted = np.stack([padded[i, r:r + height, c:c + width]
                        for i, (r, c) in enumerate(zip(rows, cols))])
    flip = rng.random(num_images) < 0.5
    shifted[flip] = shifted[flip, :, ::-1]
    return shifted