"""The chapter's JAX library, used as ``from d2l_extras import jax as d2l``.

d2l 1.0.3's own JAX module imports TensorFlow, fails on current JAX and breaks
on Python 3.12, so this module provides the parts of its API the chapter uses,
with the same names and signatures. The part above the WARNING marker is
written by hand; the part below is the chapter's ``#@save`` code, written by
``d2lbook build lib``.
"""
import dataclasses
import math
import re
import sys
import time
from typing import Any, Callable

import flax
import jax
import numpy as np
import optax
from flax import linen as nn
from flax import nnx
from jax import numpy as jnp

from d2l_extras.checks import (check_image_batch, check_position_grid, check_posemb,
                               check_sincos_width, check_token_grid, check_window_grid,
                               grid_pair, merged_grid, num_kept_patches, patch_grid)
from d2l_extras.convert.from_npz import vit_from_npz
from d2l_extras.convert.torch_flax import params_from_torch, params_to_torch
from d2l_extras.d2l_jax.attention import DotProductAttention, MultiHeadAttention, masked_softmax
from d2l_extras.d2l_jax.plotting import (ProgressBoard, plot, plt, set_axes, set_figsize,
                                         show_images, use_svg_display)
from d2l_extras.d2l_jax.training import (Classifier, DataModule, HyperParameters, Module,
                                         Trainer, TrainState, get_key, get_seed)
from d2l_extras.data import modules
from d2l_extras.data.download import fetch_checkpoint, try_download
from d2l_extras.run import quick_mode, reference_runs, saved_params

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


def run_size(max_epochs, verbose=True, quick_max_epochs=quick_mode.QUICK_MAX_EPOCHS,
             quick_num_train=quick_mode.QUICK_NUM_TRAIN,
             quick_num_val=quick_mode.QUICK_NUM_VAL):
    """Epochs and examples for a training cell: quick mode on a machine
    without an accelerator unless D2L_VIT_QUICK says otherwise (see
    ``d2l_extras.run.quick_mode``)."""
    return quick_mode.run_size(max_epochs, jax.default_backend() != 'cpu', verbose,
                               quick_max_epochs, quick_num_train, quick_num_val)


def hyperparameters(model):
    """The arguments a Flax module was built with: its fields that are
    constructor arguments (not d2l's board, not Flax's parent and name)."""
    return {field.name: getattr(model, field.name) for field in dataclasses.fields(model)
            if field.init and field.name not in ('parent', 'name')}


def save_trained(path, model, params, data, **settings):
    """Save the `params` of `model`, trained on `data`, to `path`, with what
    decided them: the hyperparameters of the model and of the data module, and
    the keyword arguments (run size, seed). Writes a new file, then renames
    it."""
    record = {'settings': saved_params.settings_json(hyperparameters(model), data, settings),
              'params': jax.device_get(params)}
    saved_params.write_atomically(
        path, lambda file: file.write(flax.serialization.msgpack_serialize(record)))


def load_trained(path, model, data, **settings):
    """The parameters that `save_trained` saved at `path`, if they were
    trained for `model` with the same hyperparameters, data and settings;
    otherwise print why not and return None."""
    def read(file):
        record = flax.serialization.msgpack_restore(file.read())
        return record['settings'], jax.tree.map(jnp.asarray, record['params'])
    expected = saved_params.settings_json(hyperparameters(model), data, settings)
    return saved_params.load(path, expected, read)


def compare_with_reference(page, models, data, run, seed=0, params=None):
    """Show the reference runs of a page's `models` (a dict of trained models
    by name; the full settings, recorded once) beside this run's; `data` is
    their data module, or a dict of them by name. A full run with
    D2L_VIT_RECORD set is recorded first, keeping the trained `params` given
    by name."""
    keep = reference_runs.recording_folder(run) is not None and params or {}
    data = data if isinstance(data, dict) else dict.fromkeys(models, data)
    runs = {name: (model.board, hyperparameters(model), data[name],
                   saved_params.settings_json(hyperparameters(model), data[name],
                                                {'run': run, 'seed': seed})
                   if name in keep else None,
                   reference_runs.flatten(jax.device_get(keep[name])) if name in keep else None)
            for name, model in models.items()}
    return reference_runs.compare(page, 'jax', runs, run)


def show_reference(page, name):
    """Say in one line what the reference run of `name` on `page` was (this
    framework's, else the other's), or that none is recorded."""
    reference_runs.show_reference(page, name, 'jax')


def load_reference_parameters(page, name, model, data, run, seed=0):
    """The parameters kept by the reference run of `name`, if that run trained
    `model` on all of Fashion-MNIST with this data module's settings;
    otherwise print why not and return None."""
    expected = reference_runs.full_settings(hyperparameters(model), data, run, seed)
    flat = reference_runs.load_kept_parameters(page, name, expected)
    if flat is None:
        return None
    return jax.tree.map(jnp.asarray, reference_runs.unflatten(flat))


# How ViTAttention computes attention when it need not return the weights:
# 'auto', 'always' or 'never' the fused kernel (see use_fused_attention).
FUSED_ATTENTION = 'auto'


def use_fused_attention(dropout):
    """Whether ViTAttention calls ``jax.nn.dot_product_attention`` (one
    optimized call that keeps no attention weights) instead of its explicit
    three lines, as ``FUSED_ATTENTION`` says: 'auto' and 'always' call it,
    'never' does not. The kernel has no dropout, so with attention dropout in
    training the explicit path is taken whatever the switch says."""
    if FUSED_ATTENTION not in ('auto', 'always', 'never'):
        raise ValueError(f'FUSED_ATTENTION={FUSED_ATTENTION!r}: set it to '
                         "'auto', 'always' or 'never'")
    return FUSED_ATTENTION != 'never' and dropout == 0


class ImageDataModule(modules.ImageDataModule, DataModule):
    """A labelled image dataset as NHWC float arrays in [0, 1] (see
    ``d2l_extras.data.modules``)."""
    channels_last = True


class FashionMNIST(modules.FashionMNISTData, ImageDataModule):
    """Fashion-MNIST as NHWC float arrays in [0, 1], with an offline stand-in,
    example caps, an optional ``augment(images, rng)`` for the training
    images and an optional ``mix(images, labels, rng)`` (Mixup, CutMix) for
    the training minibatches."""


class CIFAR10(modules.CIFAR10Data, ImageDataModule):
    """CIFAR-10 as NHWC float arrays in [0, 1], with the interface of
    ``FashionMNIST``."""


class UCIDigits(modules.UCIDigitsData, ImageDataModule):
    """The UCI handwritten digits of scikit-learn (8x8 pixels, 10 classes), as
    NHWC float arrays in [0, 1], with the interface of ``FashionMNIST``; they
    need no download."""

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
        self.img_hw, patch_size, self.grid_size = d2l.patch_grid(
            self.img_size, self.patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        # padding='VALID': only whole patches, exactly as in PyTorch.
        # Xavier on the kernel viewed as a (p * p * in, out) matrix.
        xavier_linear = nn.initializers.variance_scaling(
            1.0, 'fan_avg', 'uniform', in_axis=(0, 1, 2), out_axis=-1)
        self.conv = nn.Conv(self.num_hiddens, kernel_size=patch_size,
                            strides=patch_size, padding='VALID',
                            kernel_init=xavier_linear)

    def __call__(self, X):
        d2l.check_image_batch(X.shape, self.num_channels, self.img_hw,
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

def xavier_uniform_qkv(key, shape, dtype=jnp.float32):
    """Xavier-uniform for a (d, 3d) kernel that stacks Q, K and V: each of
    the three (d, d) matrices is initialized as if it were alone.

    Defined in :numref:`sec_vision-transformer`"""
    xavier = nn.initializers.variance_scaling(
        1.0, 'fan_avg', 'uniform', in_axis=0, out_axis=2, batch_axis=1)
    return xavier(key, (shape[0], 3, shape[1] // 3), dtype).reshape(shape)

class ViTAttention(nn.Module):
    """Multi-head self-attention; one linear layer makes Q, K and V.

    Defined in :numref:`sec_vision-transformer`"""
    num_hiddens: int
    num_heads: int
    dropout: float
    qkv_bias: bool = False

    def setup(self):
        if self.num_hiddens % self.num_heads:
            raise ValueError(f'num_hiddens={self.num_hiddens} is not '
                             f'divisible by num_heads={self.num_heads}: '
                             'every head needs the same width')
        self.qkv = nn.Dense(3 * self.num_hiddens, use_bias=self.qkv_bias,
                            kernel_init=xavier_uniform_qkv)
        self.attention_dropout = nn.Dropout(self.dropout)
        self.proj = nn.Dense(self.num_hiddens,
                             kernel_init=nn.initializers.xavier_uniform())

    def __call__(self, X, training=False, return_weights=False):
        batch_size, num_steps, num_hiddens = X.shape
        # Shape of Q, K, V: (batch size, no. of tokens, num_heads, head width)
        Q, K, V = self.qkv(X).reshape(batch_size, num_steps, 3, self.num_heads,
                                      -1).transpose(2, 0, 1, 3, 4)
        dropout = self.dropout if training else 0.0
        if return_weights or not d2l.use_fused_attention(dropout):
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

class NNXViTMLP(nnx.Module):
    """ViTMLP in Flax NNX.

    Defined in :numref:`sec_vision-transformer`"""
    def __init__(self, num_inputs, mlp_num_hiddens, mlp_num_outputs,
                 dropout=0.5, *, rngs):
        init = nnx.initializers.xavier_uniform()
        self.dense1 = nnx.Linear(num_inputs, mlp_num_hiddens,
                                 kernel_init=init, rngs=rngs)
        self.dense2 = nnx.Linear(mlp_num_hiddens, mlp_num_outputs,
                                 kernel_init=init, rngs=rngs)
        self.dropout1 = nnx.Dropout(dropout, rngs=rngs)
        self.dropout2 = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, x):
        x = self.dropout1(nnx.gelu(self.dense1(x), approximate=False))
        return self.dropout2(self.dense2(x))

class NNXViTAttention(nnx.Module):
    """ViTAttention in Flax NNX, step by step.

    Defined in :numref:`sec_vision-transformer`"""
    def __init__(self, num_hiddens, num_heads, dropout, qkv_bias=False, *,
                 rngs):
        self.num_heads = num_heads
        self.qkv = nnx.Linear(num_hiddens, 3 * num_hiddens, use_bias=qkv_bias,
                              kernel_init=xavier_uniform_qkv, rngs=rngs)
        self.attention_dropout = nnx.Dropout(dropout, rngs=rngs)
        self.proj = nnx.Linear(num_hiddens, num_hiddens, rngs=rngs,
                               kernel_init=nnx.initializers.xavier_uniform())

    def __call__(self, X):
        batch_size, num_steps, num_hiddens = X.shape
        Q, K, V = self.qkv(X).reshape(batch_size, num_steps, 3, self.num_heads,
                                      -1).transpose(2, 0, 1, 3, 4)
        scores = jnp.einsum('bqhd,bkhd->bhqk', Q, K) / Q.shape[-1]**0.5
        weights = self.attention_dropout(nnx.softmax(scores, axis=-1))
        H = jnp.einsum('bhqk,bkhd->bqhd', weights, V)
        return self.proj(H.reshape(batch_size, num_steps, num_hiddens))

class NNXViTBlock(nnx.Module):
    """ViTBlock in Flax NNX: the module holds its parameters.

    Defined in :numref:`sec_vision-transformer`"""
    def __init__(self, num_hiddens, mlp_num_hiddens, num_heads, dropout,
                 use_bias=False, *, rngs):
        self.ln1 = nnx.LayerNorm(num_hiddens, epsilon=1e-6, rngs=rngs)
        self.attention = NNXViTAttention(num_hiddens, num_heads, dropout,
                                         qkv_bias=use_bias, rngs=rngs)
        self.ln2 = nnx.LayerNorm(num_hiddens, epsilon=1e-6, rngs=rngs)
        self.mlp = NNXViTMLP(num_hiddens, mlp_num_hiddens, num_hiddens,
                             dropout, rngs=rngs)

    def __call__(self, X):
        X = X + self.attention(self.ln1(X))
        return X + self.mlp(self.ln2(X))

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
    posemb: str = 'learn'

    def setup(self):
        if self.pool not in ('cls', 'mean'):
            raise ValueError("pool must be 'cls' or 'mean', got "
                             f'{self.pool!r}')
        self.patch_embedding = PatchEmbedding(self.img_size, self.patch_size,
                                              self.num_hiddens,
                                              self.num_channels)
        if self.pool == 'cls':
            self.cls_token = self.param('cls_token', nn.initializers.zeros,
                                        (1, 1, self.num_hiddens))
        _, _, grid_size = d2l.patch_grid(self.img_size, self.patch_size)
        num_steps = self.num_prefix_tokens + grid_size[0] * grid_size[1]
        if self.posemb == 'learn':
            self.pos_embedding = self.param(
                'pos_embedding', nn.initializers.normal(stddev=0.02),
                (1, num_steps, self.num_hiddens))
        else:  # Fixed: computed for the grid, not one of the parameters
            self.pos_embedding = d2l.fixed_position_embedding(
                self.posemb, grid_size, self.num_hiddens,
                self.num_prefix_tokens)
        self.dropout = nn.Dropout(self.emb_dropout)
        self.blks = [ViTBlock(self.num_hiddens, self.mlp_num_hiddens,
                              self.num_heads, self.blk_dropout, self.use_bias)
                     for _ in range(self.num_blks)]
        self.head = nn.Sequential([
            nn.LayerNorm(epsilon=1e-6),
            nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros)])

    @property
    def num_prefix_tokens(self):
        """The tokens before the patches: the class token, if any."""
        return 1 if self.pool == 'cls' else 0

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
        if self.posemb == 'learn':  # fixed ones are computed for the new grid
            params = dict(params, pos_embedding=resize_position_embedding(
                params['pos_embedding'],
                d2l.patch_grid(self.img_size, self.patch_size)[2],
                d2l.patch_grid(img_size, self.patch_size)[2],
                self.num_prefix_tokens, mode))
        return model, params

    def with_num_classes(self, params, num_classes):
        """A copy of the model with a new, zero linear head for `num_classes`
        classes, and its parameters; every other parameter is kept.

        Defined in :numref:`sec_vit-fine-tuning`"""
        kernel = params['head']['layers_1']['kernel']
        head = dict(params['head'], layers_1={
            'kernel': jnp.zeros((kernel.shape[0], num_classes), kernel.dtype),
            'bias': jnp.zeros(num_classes, kernel.dtype)})
        return self.clone(num_classes=num_classes), dict(params, head=head)

def evaluate_accuracy(model, params, data):
    """The fraction of validation examples that the model classifies right.

    Defined in :numref:`sec_vision-transformer`"""
    # The parameters are an argument: a closure would compile them into
    # the program as constants, anew for every model
    predict = jax.jit(
        lambda params, X: model.apply({'params': params}, X).argmax(1))
    correct = total = 0
    for X, y in data.val_dataloader():
        correct += int((predict(params, X) == y).sum())
        total += len(y)
    return correct / total

def resize_position_embedding(pos_embedding, old_grid, new_grid,
                              num_prefix_tokens=1, mode='bicubic'):
    """Interpolate position embeddings to a new grid of patches in 2D.

    Defined in :numref:`sec_vision-transformer`"""
    d2l.check_position_grid(pos_embedding.shape[1], num_prefix_tokens,
                            old_grid)
    prefix = pos_embedding[:, :num_prefix_tokens]
    # (1, h * w, d) -> (1, h, w, d): an image with d channels
    grid = pos_embedding[:, num_prefix_tokens:].reshape(
        1, old_grid[0], old_grid[1], -1)
    method = {'bilinear': 'linear', 'bicubic': 'cubic'}[mode]
    grid = jax.image.resize(grid, (1, *new_grid, grid.shape[-1]), method,
                            antialias=True)
    return jnp.concatenate(
        (prefix, grid.reshape(1, new_grid[0] * new_grid[1], -1)), axis=1)

def plot_runs(boards, labels=('val_loss', 'val_acc'),
              figsize=(7, 2.5)):
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
    patch_embedding = (2 * num_patches * num_channels * patch_size**2
                       * num_hiddens)
    per_token = 2 * (4 * num_hiddens**2 + 2 * num_hiddens * mlp_num_hiddens)
    head = 2 * num_hiddens * num_classes
    linear = patch_embedding + num_blks * per_token * num_tokens + head
    attention = num_blks * 2 * (2 * num_tokens**2 * num_hiddens)
    # Backward costs about twice the forward pass
    return 3 * batch_size * linear, 3 * batch_size * attention

def time_training_step(model, X, y, num_repeats=5):
    """Compile seconds, and the seconds of `num_repeats` warm jitted steps.

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
    """Fit seconds = c0 + c1 * T + c2 * T**2 with c0, c1, c2 >= 0, minimizing
    the relative error of each time.

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

def adamw_warmup_cosine(module):
    """AdamW at the module's lr and weight_decay, with a linear warm-up over
    its `warmup` fraction of the trainer's steps, then a cosine decay to 0.

    Defined in :numref:`sec_vit-exercise-accuracy`"""
    total_steps = module.trainer.max_epochs * module.trainer.num_train_batches
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, module.lr, round(module.warmup * total_steps), total_steps)
    return optax.adamw(schedule, weight_decay=module.weight_decay)

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
            jax.nn.one_hot(Y.reshape(-1), Y_hat.shape[-1]),
            self.label_smoothing)
        losses = optax.softmax_cross_entropy(Y_hat, targets)
        return (losses.mean() if averaged else losses), updates

    def configure_optimizers(self):
        if not self.adamw:
            return super().configure_optimizers()
        return adamw_warmup_cosine(self)

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

def patches_as_sequence(X, patch_size):
    """Cut NHWC images into the sequence of patches that a ViT reads.

    Defined in :numref:`sec_vit-what-it-learns`"""
    d2l.patch_grid(tuple(X.shape[1:3]), patch_size)  # refuse leftover pixels
    # Shape: (batch size, no. of patches, patch_size, patch_size, channels)
    return d2l.patchify(X, patch_size).reshape(
        X.shape[0], -1, patch_size, patch_size, X.shape[3])

def show_patch_sequence(image, patches, figsize=(9, 3.6)):
    """Draw an image cut into patches, and its patches as a token sequence.

    Defined in :numref:`sec_vit-what-it-learns`"""
    d2l.use_svg_display()
    image, patches = np.asarray(image), np.asarray(patches)
    if image.shape[-1] == 1:  # grayscale: drop the channel axis
        image, patches = image[..., 0], patches[..., 0]
    p, cmap = patches.shape[1], 'gray' if image.ndim == 2 else None
    fig = d2l.plt.figure(figsize=figsize)
    top = fig.add_axes([0, 0.3, 1, 0.68])
    top.imshow(image, cmap=cmap, vmin=0, vmax=1)
    for i in range(len(patches)):  # number the patches in reading order
        row, col = divmod(i, image.shape[1] // p)
        top.text((col + 0.5) * p - 0.5, (row + 0.5) * p - 0.5, str(i),
                 color='yellow', ha='center', va='center', fontsize=7,
                 bbox=dict(facecolor='black', alpha=0.5, linewidth=0, pad=1))
    top.set_xticks(np.arange(p, image.shape[1], p) - 0.5)
    top.set_yticks(np.arange(p, image.shape[0], p) - 0.5)
    top.grid(color='white', linewidth=1)
    top.tick_params(length=0, labelbottom=False, labelleft=False)
    # The sequence: the patches side by side, with white gaps between them
    gap = np.ones((p, max(p // 4, 1), *patches.shape[3:]), patches.dtype)
    strip = np.concatenate([part for patch in patches
                            for part in (patch, gap)][:-1], axis=1)
    bottom = fig.add_axes([0, 0, 1, 0.22])
    bottom.imshow(strip, cmap=cmap, vmin=0, vmax=1)
    bottom.set_title(f'the sequence of {len(patches)} patch tokens',
                     fontsize=9)
    bottom.axis('off')

def patch_embedding_components(kernel, num_components=28):
    """The first principal components of the patch-embedding filters.

    `kernel` is the patch convolution's kernel, (p, p, channels, num_hiddens):
    num_hiddens filters, each a point in p * p * channels dimensions. Returns
    the components shaped like filters, (num_components, p, p, channels), as
    orthonormal directions, and the fraction of the filters' variance that
    each explains. A component's sign is arbitrary; we make its largest entry
    positive, so that both frameworks draw the same pictures.

    Defined in :numref:`sec_vit-what-it-learns`"""
    filters = kernel.reshape(-1, kernel.shape[-1]).T  # one filter per row
    if not 0 < num_components <= min(filters.shape):
        raise ValueError(f'num_components={num_components} must be between '
                         f'1 and {min(filters.shape)} for '
                         f'{tuple(filters.shape)} filters')
    filters = filters - filters.mean(axis=0)  # PCA works on centred data
    _, S, Vt = jnp.linalg.svd(filters, full_matrices=False)
    components = Vt[:num_components]
    largest = jnp.take_along_axis(
        components, jnp.abs(components).argmax(1, keepdims=True), axis=1)
    explained = S**2 / (S**2).sum()
    return (components * jnp.sign(largest)).reshape(-1, *kernel.shape[:-1]), \
        explained[:num_components]

def position_embedding_similarity(pos_embedding, grid_size,
                                  num_prefix_tokens=1):
    """Cosine similarity of each patch position's embedding with every other's.

    `pos_embedding` has shape (1, tokens, num_hiddens); the first
    `num_prefix_tokens` (the class token) are left out. Returns shape
    (grid height, grid width, grid height, grid width).

    Defined in :numref:`sec_vit-what-it-learns`"""
    height, width = d2l.check_token_grid(pos_embedding.shape[1], grid_size,
                                         num_prefix_tokens)
    P = pos_embedding[0, num_prefix_tokens:]
    P = P / jnp.linalg.norm(P, axis=-1, keepdims=True)
    return (P @ P.T).reshape(height, width, height, width)

def show_position_similarity(similarity, scale=0.6, vmin=-1):
    """Draw one heat map per patch position: its embedding's cosine
    similarity with every position, laid out as the grid of patches; the
    colours go from `vmin` to 1.

    Defined in :numref:`sec_vit-what-it-learns`"""
    d2l.use_svg_display()
    similarity = np.asarray(similarity)
    height, width = similarity.shape[:2]
    fig, axes = d2l.plt.subplots(height, width, squeeze=False,
                                 figsize=(width * scale + 0.8, height * scale))
    for i in range(height):
        for j in range(width):
            picture = axes[i, j].imshow(similarity[i, j], cmap='viridis',
                                        vmin=vmin, vmax=1)
            axes[i, j].set_xticks([]), axes[i, j].set_yticks([])
    for i in range(height):
        axes[i, 0].set_ylabel(str(i + 1), rotation=0, labelpad=8)
    for j in range(width):
        axes[-1, j].set_xlabel(str(j + 1))
    fig.supylabel('input patch row'), fig.supxlabel('input patch column')
    fig.colorbar(picture, ax=axes, shrink=0.8, label='cosine similarity')

def class_token_attention(attention, grid_size):
    """The class token's attention to each patch, as the grid of patches.

    `attention` has shape (..., tokens, tokens) with the class token first;
    returns shape (..., grid height, grid width).

    Defined in :numref:`sec_vit-what-it-learns`"""
    height, width = d2l.check_token_grid(attention.shape[-1], grid_size)
    return attention[..., 0, 1:].reshape(*attention.shape[:-2], height, width)

def attention_rollout(attention):
    """Attention rollout (Abnar and Zuidema, 2020) through all blocks.

    `attention` is a list of (batch size, heads, tokens, tokens) weights, first
    block first. Heads are averaged; the identity stands for the residual
    connection. Returns shape (batch size, tokens, tokens).

    Defined in :numref:`sec_vit-what-it-learns`"""
    if not len(attention):
        raise ValueError('attention_rollout needs the weights of at least one '
                         'block: call the model with return_weights=True')
    rollout = None
    for A in attention:
        A = A.mean(axis=1) + jnp.eye(A.shape[-1])
        A = A / A.sum(axis=-1, keepdims=True)  # rows sum to 1 again
        rollout = A if rollout is None else A @ rollout
    return rollout

def show_attention(images, maps, titles, scale=1.2, alpha=0.6):
    """Overlay attention maps on images: one row per image, which comes first,
    then one map per column. `maps` has shape (images, columns, grid height,
    grid width).

    Defined in :numref:`sec_vit-what-it-learns`"""
    d2l.use_svg_display()
    images, maps = np.asarray(images), np.asarray(maps)
    if images.shape[-1] == 1:  # grayscale: drop the channel axis
        images = images[..., 0]
    num_rows, num_cols = maps.shape[0], maps.shape[1] + 1
    _, axes = d2l.plt.subplots(num_rows, num_cols, squeeze=False,
                               figsize=(num_cols * scale, num_rows * scale))
    for image, image_maps, row in zip(images, maps, axes):
        extent = (0, image.shape[1], image.shape[0], 0)
        for col, ax in enumerate(row):
            ax.imshow(image, cmap='gray', extent=extent)
            if col:
                ax.imshow(image_maps[col - 1], cmap='inferno', alpha=alpha,
                          extent=extent)
            ax.axis('off')
    for ax, title in zip(axes[0], ['image', *titles]):
        ax.set_title(title, fontsize=9)

def patch_distances(grid_size, patch_size):
    """Distances in pixels between the centres of all pairs of patches, of
    shape (no. of patches, no. of patches), patches in reading order.

    Defined in :numref:`sec_vit-what-it-learns`"""
    height, width = d2l.grid_pair(grid_size)
    rows, cols = np.divmod(np.arange(height * width), width)
    centres = patch_size * np.stack((rows, cols), axis=1).astype(np.float32)
    return np.linalg.norm(centres[:, None] - centres[None], axis=-1)

def mean_attention_distance(attention, grid_size, patch_size):
    """The mean attention distance in pixels of each head, shape (heads,).

    `attention` has shape (batch size, heads, tokens, tokens), the class token
    first. The class token has no place in the image, so its row and column
    are left out, and each query's weights over the patches are renormalized
    to sum to 1. Each query's distance is its weighted sum of patch distances;
    it is averaged over the queries and the batch.

    Defined in :numref:`sec_vit-what-it-learns`"""
    if attention.ndim != 4:
        raise ValueError(f'expected attention of shape (batch size, heads, '
                         f'tokens, tokens), got {tuple(attention.shape)}: '
                         'pass one block\'s weights, not the list of blocks')
    d2l.check_token_grid(attention.shape[-1], grid_size)
    distances = jnp.asarray(patch_distances(grid_size, patch_size))
    A = attention[:, :, 1:, 1:]
    A = A / A.sum(axis=-1, keepdims=True)
    return (A * distances).sum(axis=-1).mean(axis=(0, 2))

def plot_attention_distance(distances, reference=None, labels=None):
    """Scatter each head's mean attention distance against its block's depth.

    `distances` holds one array of shape (heads,) per block, or several such
    lists (one per model) to compare, named by `labels`.

    Defined in :numref:`sec_vit-what-it-learns`"""
    d2l.use_svg_display()
    _, ax = d2l.plt.subplots(figsize=(4, 2.8))
    runs = [distances] if labels is None else distances
    for k, (run, marker) in enumerate(zip(runs, 'oxs^')):
        run = np.asarray(run)  # (blocks, heads)
        depth = np.repeat(np.arange(1, len(run) + 1), run.shape[1])
        ax.scatter(depth + 0.1 * k, run.ravel(), marker=marker,
                   label=None if labels is None else labels[k])
    if reference is not None:
        ax.axhline(reference, color='gray', linestyle='--',
                   label='uniform attention')
    ax.set_xticks(np.arange(1, len(runs[0]) + 1))
    ax.set_xlabel('block (network depth)')
    ax.set_ylabel('mean attention distance (pixels)')
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)

def shuffle_patches(X, patch_size, order):
    """Images (N, H, W, C) whose patch k (row by row) is patch order[k].

    Defined in :numref:`sec_vit-position-embeddings`"""
    n, h, w, c = X.shape
    rows, cols = h // patch_size, w // patch_size
    P = X.reshape(n, rows, patch_size, cols, patch_size, c)
    P = P.transpose(0, 1, 3, 2, 4, 5).reshape(n, rows * cols, -1)
    P = P[:, jnp.asarray(order)]
    P = P.reshape(n, rows, cols, patch_size, patch_size, c)
    return P.transpose(0, 1, 3, 2, 4, 5).reshape(n, h, w, c)

def sincos_1d_position_embedding(num_steps, num_hiddens,
                                 temperature=10000.0):
    """The Transformer's sine-cosine encoding of positions 0, 1, ...:
    shape (num_steps, num_hiddens), sines in even and cosines in odd
    columns.

    Defined in :numref:`sec_vit-position-embeddings`"""
    d2l.check_sincos_width(num_hiddens, 2)
    positions = jnp.arange(num_steps, dtype=jnp.float32)[:, None]
    exponents = jnp.arange(0, num_hiddens, 2) / num_hiddens
    angles = positions / temperature ** exponents
    P = jnp.zeros((num_steps, num_hiddens))
    return P.at[:, 0::2].set(jnp.sin(angles)).at[:, 1::2].set(jnp.cos(angles))

def sincos_position_embedding(grid_size, num_hiddens,
                              temperature=10000.0):
    """2D sine-cosine embeddings of a (rows, columns) grid of patches, row by
    row: shape (rows * columns, num_hiddens), the sines and cosines of the
    column, then those of the row.

    Defined in :numref:`sec_vit-position-embeddings`"""
    rows, cols = d2l.grid_pair(grid_size)
    d2l.check_sincos_width(num_hiddens, 4)
    r, c = jnp.meshgrid(jnp.arange(rows), jnp.arange(cols), indexing='ij')
    omega = jnp.arange(num_hiddens // 4) / (num_hiddens // 4 - 1)
    omega = 1.0 / temperature ** omega
    c, r = c.reshape(-1, 1) * omega, r.reshape(-1, 1) * omega
    return jnp.concatenate((jnp.sin(c), jnp.cos(c), jnp.sin(r), jnp.cos(r)),
                           axis=1)

def fixed_position_embedding(posemb, grid_size, num_hiddens,
                             num_prefix_tokens=1):
    """Position embeddings that are computed, not learned: shape
    (1, prefix tokens + patches, num_hiddens), zero for the prefix tokens.

    Defined in :numref:`sec_vit-position-embeddings`"""
    d2l.check_posemb(posemb)
    rows, cols = d2l.grid_pair(grid_size)
    if posemb == 'sincos2d':
        P = sincos_position_embedding((rows, cols), num_hiddens)
    elif posemb == 'sincos1d':
        P = sincos_1d_position_embedding(rows * cols, num_hiddens)
    elif posemb == 'none':
        P = jnp.zeros((rows * cols, num_hiddens))
    else:
        raise ValueError("learned embeddings are parameters of the model")
    prefix = jnp.zeros((num_prefix_tokens, num_hiddens))
    return jnp.concatenate((prefix, P))[None]

kaiming_normal = nn.initializers.variance_scaling(
    2.0, 'fan_out', 'normal')

class Residual(nn.Module):
    """The residual block of ResNet, told at call time whether it trains.

    Defined in :numref:`sec_vit-vs-cnn`"""
    num_channels: int
    use_1x1conv: bool = False
    strides: tuple = (1, 1)

    def setup(self):
        conv = lambda size, **kwargs: nn.Conv(
            self.num_channels, (size, size), kernel_init=kaiming_normal,
            **kwargs)
        self.conv1 = conv(3, strides=self.strides, padding=1)
        self.conv2 = conv(3, padding=1)
        self.conv3 = (conv(1, strides=self.strides) if self.use_1x1conv
                      else None)
        # PyTorch's defaults: Flax's momentum is the weight of the old value
        self.bn1 = nn.BatchNorm(momentum=0.9, epsilon=1e-5)
        self.bn2 = nn.BatchNorm(momentum=0.9, epsilon=1e-5)

    def __call__(self, X, training=False):
        Y = nn.relu(self.bn1(self.conv1(X), use_running_average=not training))
        Y = self.bn2(self.conv2(Y), use_running_average=not training)
        if self.conv3 is not None:
            X = self.conv3(X)
        return nn.relu(Y + X)

class ResNet18(d2l.Classifier):
    """ResNet-18 with the stage widths as a parameter.

    Defined in :numref:`sec_vit-vs-cnn`"""
    arch: tuple = ((2, 64), (2, 128), (2, 256), (2, 512))
    lr: float = 0.1
    num_classes: int = 10
    num_channels: int = 1
    small_images: bool = False

    def setup(self):
        width = self.arch[0][1]
        if self.small_images:
            self.stem_conv = nn.Conv(width, (3, 3), padding=1,
                                     kernel_init=kaiming_normal)
        else:
            self.stem_conv = nn.Conv(width, (7, 7), strides=(2, 2), padding=3,
                                     kernel_init=kaiming_normal)
        self.stem_bn = nn.BatchNorm(momentum=0.9, epsilon=1e-5)
        self.stages = [
            [Residual(width, use_1x1conv=downsample,
                      strides=(2, 2) if downsample else (1, 1))
             for downsample in [stage > 0] + [False] * (num_blks - 1)]
            for stage, (num_blks, width) in enumerate(self.arch)]
        self.head = nn.Dense(self.num_classes,
                             kernel_init=nn.initializers.zeros)

    def __call__(self, X, training=False):
        X = self.stem_bn(self.stem_conv(X), use_running_average=not training)
        X = nn.relu(X)
        if not self.small_images:
            X = nn.max_pool(X, (3, 3), strides=(2, 2),
                            padding=((1, 1), (1, 1)))
        for stage in self.stages:
            for blk in stage:
                X = blk(X, training)
        return self.head(X.mean(axis=(1, 2)))

def compose(*augmentations):
    """One augment(images, rng) that applies `augmentations` in turn.

    Defined in :numref:`sec_vit-training-recipe`"""
    def augment(images, rng):
        for augmentation in augmentations:
            images = augmentation(images, rng)
        return images
    return augment

def warp(images, matrices, offsets):
    """(N, H, W) images, each under its own affine map about the centre: the
    output pixel at (row, column) p of image i takes the input pixel nearest
    to matrices[i] @ p + offsets[i], or 0 (the background) from outside.

    Defined in :numref:`sec_vit-training-recipe`"""
    n, height, width = images.shape
    centre = np.array([(height - 1) / 2, (width - 1) / 2])
    grid = np.indices((height, width)).reshape(2, -1).T - centre  # (H*W, 2)
    source = grid @ np.swapaxes(matrices, 1, 2) + centre + offsets[:, None]
    rows, cols = np.rint(source).astype(int).transpose(2, 0, 1)
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    which = np.broadcast_to(np.arange(n)[:, None], rows.shape)
    warped = np.zeros_like(images).reshape(n, -1)
    warped[inside] = images[which[inside], rows[inside], cols[inside]]
    return warped.reshape(images.shape)


def augment_op(images, name, levels, max_value=255):
    """One of RandAugment's operations on (N, H, W) images, each at its own
    level between -1 and 1: the magnitude / 10, with a sign.

    Defined in :numref:`sec_vit-training-recipe`"""
    n, height, width = images.shape
    level = np.broadcast_to(np.asarray(levels, dtype=float), (n,))
    zero, one, offsets = np.zeros(n), np.ones(n), np.zeros((n, 2))
    if name == 'rotate':  # by up to 30 degrees
        a = np.deg2rad(30 * level)
        matrix = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    elif name == 'shear_x':  # each row shifted in proportion to its height
        matrix = [[one, zero], [0.3 * level, one]]
    elif name == 'shear_y':
        matrix = [[one, 0.3 * level], [zero, one]]
    elif name in ('translate_x', 'translate_y'):  # by up to 45% of the side
        matrix = [[one, zero], [zero, one]]
        axis = 1 if name == 'translate_x' else 0
        offsets[:, axis] = 0.45 * level * (width if axis else height)
    elif name in ('contrast', 'brightness'):
        # Blend with each image's mean gray (contrast) or with black
        base = (images.mean(axis=(1, 2), keepdims=True)
                if name == 'contrast' else 0.0)
        blended = base + (1 + 0.9 * level[:, None, None]) * (images - base)
        return np.rint(np.clip(blended, 0, max_value)).astype(images.dtype)
    else:
        raise ValueError(f'unknown operation {name!r}')
    return warp(images, np.moveaxis(np.array(matrix), -1, 0), offsets)

def rand_augment(images, rng, num_ops=2, magnitude=9,
                 magnitude_std=0.5, prob=0.5, max_value=255,
                 ops=('rotate', 'shear_x', 'shear_y', 'translate_x',
                      'translate_y', 'contrast', 'brightness')):
    """RandAugment as DeiT uses it (timm's rand-m9-mstd0.5-inc1) on (N, H, W)
    images: `num_ops` operations drawn from `ops` for each image, each applied
    with probability `prob` at a magnitude (out of 10) drawn around
    `magnitude`, with a random sign.

    Defined in :numref:`sec_vit-training-recipe`"""
    augmented, n = images.copy(), len(images)
    for _ in range(num_ops):
        names = rng.choice(ops, n)  # one operation for each image
        applied = rng.random(n) < prob
        magnitudes = np.clip(rng.normal(magnitude, magnitude_std, n), 0, 10)
        levels = rng.choice([-1, 1], n) * magnitudes / 10
        for name in ops:
            chosen = applied & (names == name)
            if chosen.any():
                augmented[chosen] = augment_op(augmented[chosen], name,
                                               levels[chosen], max_value)
    return augmented

def erasing_box(height, width, rng, area=(0.02, 1 / 3),
                aspect=(0.3, 1 / 0.3), attempts=10):
    """A random (top, left, box height, box width) inside an image, as timm
    draws it for random erasing, or None if none of `attempts` fits.

    Defined in :numref:`sec_vit-training-recipe`"""
    for _ in range(attempts):
        target = rng.uniform(*area) * height * width
        ratio = np.exp(rng.uniform(np.log(aspect[0]), np.log(aspect[1])))
        h = int(round(np.sqrt(target * ratio)))
        w = int(round(np.sqrt(target / ratio)))
        if h < height and w < width:
            return (int(rng.integers(0, height - h + 1)),
                    int(rng.integers(0, width - w + 1)), h, w)
    return None


def random_erasing(images, rng, prob=0.25, max_value=255):
    """Random erasing as DeiT uses it (timm's 'pixel' mode): in each (N, H, W)
    image with probability `prob`, one random rectangle filled with noise of
    the minibatch's mean and standard deviation.

    Defined in :numref:`sec_vit-training-recipe`"""
    erased = images.copy()
    mean, std = images.mean(), images.std()
    for image in erased:
        if rng.random() < prob:
            box = erasing_box(*image.shape, rng)
            if box is not None:
                top, left, h, w = box
                noise = np.clip(rng.normal(mean, std, (h, w)), 0, max_value)
                image[top:top + h, left:left + w] = np.rint(noise)
    return erased

def cutmix_box(height, width, lam, rng):
    """CutMix's box (top, bottom, left, right), as timm draws it: sides
    sqrt(1 - lam) times the image's around a random centre, clipped to the
    image.

    Defined in :numref:`sec_vit-training-recipe`"""
    cut_h = int(height * np.sqrt(1 - lam))
    cut_w = int(width * np.sqrt(1 - lam))
    row, col = rng.integers(0, height), rng.integers(0, width)
    top, bottom = np.clip([row - cut_h // 2, row + (cut_h + 1) // 2],
                          0, height)
    left, right = np.clip([col - cut_w // 2, col + (cut_w + 1) // 2],
                          0, width)
    return int(top), int(bottom), int(left), int(right)


def mixup_cutmix(images, labels, rng, num_classes=10,
                 mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5):
    """Mix a minibatch of images with the minibatch reversed, as DeiT does:
    by CutMix with probability `switch_prob`, else by Mixup. Returns the
    mixed images (float32) and their soft labels, (N, num_classes).

    Defined in :numref:`sec_vit-training-recipe`"""
    targets = np.eye(num_classes, dtype=np.float32)[labels]
    mixed = images.astype(np.float32)
    if rng.random() < switch_prob:  # CutMix
        lam = rng.beta(cutmix_alpha, cutmix_alpha)
        height, width = images.shape[1:3]
        top, bottom, left, right = cutmix_box(height, width, lam, rng)
        mixed[:, top:bottom, left:right] = images[::-1, top:bottom,
                                                  left:right]
        lam = 1 - (bottom - top) * (right - left) / (height * width)
    else:  # Mixup
        lam = rng.beta(mixup_alpha, mixup_alpha)
        mixed = lam * mixed + (1 - lam) * mixed[::-1]
    soft_labels = lam * targets + (1 - lam) * targets[::-1]
    return mixed.astype(np.float32), soft_labels.astype(np.float32)

def drop_path(X, p, training, key=None, keep=None):
    """Stochastic depth: in training, zero each example (along the first
    axis of X) with probability p and scale the others by 1 / (1 - p); the
    identity in evaluation. The draws come from `key`, unless `keep` (one
    boolean per example) is given.

    Defined in :numref:`sec_vit-training-recipe`"""
    if not training or p == 0:
        return X
    if keep is None:
        keep = jax.random.bernoulli(key, 1 - p, (X.shape[0],))
    keep = keep.reshape(-1, *[1] * (X.ndim - 1))
    return X * (keep / (1 - p))

def drop_path_rates(drop_path_rate, num_blks):
    """Each block's drop path rate: rising linearly from 0 in the first
    block to `drop_path_rate` in the last, as in DeiT and timm.

    Defined in :numref:`sec_vit-training-recipe`"""
    return [float(rate) for rate in np.linspace(0, drop_path_rate, num_blks)]

class DropPathBlock(d2l.ViTBlock):
    """A ViT encoder block whose two residual branches are dropped, per
    example, with probability drop_prob in training (stochastic depth).

    Defined in :numref:`sec_vit-training-recipe`"""
    drop_prob: float = 0.0

    def drop(self, Y, training):
        key = (self.make_rng('dropout') if training and self.drop_prob > 0
               else None)  # from the dropout keys the trainer hands out
        return drop_path(Y, self.drop_prob, training, key)

    def __call__(self, X, training=False, return_weights=False):
        Y, weights = self.attention(self.ln1(X), training, return_weights)
        X = X + self.drop(Y, training)
        X = X + self.drop(self.mlp(self.ln2(X), training=training), training)
        return (X, weights) if return_weights else X

class RecipeViT(d2l.TunedViT):
    """TunedViT with stochastic depth, and a loss that takes soft labels.

    Defined in :numref:`sec_vit-training-recipe`"""
    drop_path_rate: float = 0.0

    def __setattr__(self, name, value):
        if name == 'blks':  # ViT.setup assigns its blocks: replace them
            value = [DropPathBlock(self.num_hiddens, self.mlp_num_hiddens,
                                   self.num_heads, self.blk_dropout,
                                   self.use_bias, drop_prob=rate)
                     for rate in drop_path_rates(self.drop_path_rate,
                                                 self.num_blks)]
        super().__setattr__(name, value)

    def loss(self, params, X, Y, state, averaged=True):
        Y_hat, updates = self.forward_logits(params, X, state)
        Y_hat = Y_hat.reshape((-1, Y_hat.shape[-1]))
        if not jnp.issubdtype(Y.dtype, jnp.floating):  # class indices
            Y = jax.nn.one_hot(Y.reshape(-1), Y_hat.shape[-1])
        eps = self.label_smoothing
        targets = (1 - eps) * Y + eps / Y_hat.shape[-1]
        losses = optax.softmax_cross_entropy(Y_hat, targets)
        return (losses.mean() if averaged else losses), updates

def average_heads(class_logits, dist_logits):
    """Logits whose softmax is the mean of the two heads' softmax outputs.

    Defined in :numref:`sec_deit`"""
    log_probs = jnp.stack((jax.nn.log_softmax(class_logits, axis=-1),
                           jax.nn.log_softmax(dist_logits, axis=-1)))
    return jax.nn.logsumexp(log_probs, axis=0) - math.log(2)

def check_distillation(distillation, temperature, teacher_weight):
    """Raise a ValueError naming the problem in distillation settings.

    Defined in :numref:`sec_deit`"""
    if distillation not in ('hard', 'soft', 'none'):
        raise ValueError("distillation must be 'hard', 'soft' or 'none' "
                         f'(no teacher), got {distillation!r}')
    if not temperature > 0:
        raise ValueError(f'the temperature must be positive, got {temperature}'
                         ': 1 keeps the softmax as it is, larger softens it')
    if not 0 <= teacher_weight <= 1:
        raise ValueError('teacher_weight is the weight of the distillation '
                         "head's loss, between 0 and 1; got "
                         f'{teacher_weight}')

class DistillationViT(d2l.ViT):
    """The ViT with a distillation token and a second head (DeiT).

    Defined in :numref:`sec_deit`"""
    distillation: str = 'hard'
    temperature: float = 3.0
    teacher_weight: float = 0.5

    def __post_init__(self):
        check_distillation(self.distillation, self.temperature,
                           self.teacher_weight)
        super().__post_init__()

    num_prefix_tokens = 2  # the class and the distillation token

    def setup(self):
        if self.pool != 'cls':
            raise ValueError('DistillationViT reads the class token: pool '
                             f"must be 'cls', got {self.pool!r}")
        super().setup()  # the ViT's layers, with room for both tokens
        self.dist_token = self.param('dist_token',
                                     nn.initializers.normal(stddev=0.02),
                                     (1, 1, self.num_hiddens))
        self.head_dist = nn.Dense(self.num_classes,
                                  kernel_init=nn.initializers.zeros)

    def encode(self, X, training=False):
        """The tokens after the position embeddings and after each block."""
        X = self.patch_embedding(X)
        prefix = jnp.concatenate((self.cls_token, self.dist_token), axis=1)
        X = jnp.concatenate(
            (jnp.broadcast_to(prefix, (X.shape[0], 2, X.shape[2])), X), axis=1)
        outputs = [self.dropout(X + self.pos_embedding,
                                deterministic=not training)]
        for blk in self.blks:
            outputs.append(blk(outputs[-1], training))
        return outputs

    def heads(self, X, training=False):
        """The logits of the class head and of the distillation head."""
        X = self.head.layers[0](self.encode(X, training)[-1][:, :2])
        return self.head.layers[1](X[:, 0]), self.head_dist(X[:, 1])

    def __call__(self, X, training=False):
        return average_heads(*self.heads(X, training))

    def training_step(self, params, batch, state):
        """The distillation loss of one minibatch and its gradient.
    
        Defined in :numref:`sec_deit`"""
        X, y = batch
        teacher_logits = None
        if self.distillation != 'none':  # in evaluation mode: training=False
            teacher_logits = state.teacher_apply_fn(state.teacher_variables, X)
    
        def loss(params):
            class_logits, dist_logits = state.apply_fn(
                {'params': params}, X, training=state.training,
                rngs={'dropout': state.dropout_rng}, method='heads')
            return distillation_loss(class_logits, dist_logits, y, teacher_logits,
                                     self.distillation, self.temperature,
                                     self.teacher_weight), {}
    
        return jax.value_and_grad(loss, has_aux=True)(params)

def distillation_loss(class_logits, dist_logits, labels,
                      teacher_logits, distillation='hard',
                      temperature=3.0, teacher_weight=0.5):
    """DeiT's objective for a student with a class and a distillation head.

    Defined in :numref:`sec_deit`"""
    check_distillation(distillation, temperature, teacher_weight)
    cross_entropy = lambda logits, labels: \
        optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    class_loss = cross_entropy(class_logits, labels)
    if distillation == 'none':  # The distillation head learns the labels
        dist_loss = cross_entropy(dist_logits, labels)
    elif distillation == 'hard':  # ... the teacher's decisions
        dist_loss = cross_entropy(dist_logits, teacher_logits.argmax(axis=-1))
    else:  # KL(teacher || student) at temperature tau, mean over examples
        log_p = jax.nn.log_softmax(
            jax.lax.stop_gradient(teacher_logits) / temperature, axis=-1)
        log_q = jax.nn.log_softmax(dist_logits / temperature, axis=-1)
        dist_loss = temperature**2 * (
            jnp.exp(log_p) * (log_p - log_q)).sum(axis=-1).mean()
    return (1 - teacher_weight) * class_loss + teacher_weight * dist_loss

class DistillationState(d2l.TrainState):
    """The train state of a student, with its teacher's fixed variables.

    Defined in :numref:`sec_deit`"""
    teacher_variables: Any = None
    teacher_apply_fn: Callable = flax.struct.field(pytree_node=False,
                                                   default=None)


class DistillationTrainer(d2l.Trainer):
    """A trainer whose students learn from a fixed teacher.

    Defined in :numref:`sec_deit`"""
    def __init__(self, teacher, teacher_variables, max_epochs, num_gpus=0,
                 gradient_clip_val=0):
        super().__init__(max_epochs, num_gpus, gradient_clip_val)
        self.teacher, self.teacher_variables = teacher, teacher_variables

    def init_state(self, model, key, batch=None):
        state = super().init_state(model, key, batch)
        # A copy: the compiled step donates the state's buffers to its output
        return DistillationState.create(
            apply_fn=state.apply_fn, params=state.params, tx=state.tx,
            batch_stats=state.batch_stats, dropout_rng=state.dropout_rng,
            teacher_variables=jax.tree.map(jnp.copy, self.teacher_variables),
            teacher_apply_fn=self.teacher.apply)

def head_accuracies(model, params, data):
    """Validation accuracy of the class head, the distillation head and of
    the mean of their softmax outputs.

    Defined in :numref:`sec_deit`"""
    @jax.jit  # the parameters are an argument, not constants in the program
    def count_correct(params, X, y):
        class_logits, dist_logits = model.apply({'params': params}, X,
                                                method='heads')
        return jnp.stack([(logits.argmax(axis=1) == y).sum() for logits in (
            class_logits, dist_logits, average_heads(class_logits,
                                                     dist_logits))])
    correct, total = np.zeros(3), 0
    for X, y in data.val_dataloader():
        correct += np.asarray(count_correct(params, X, y))
        total += len(y)
    return (correct / total).tolist()

def token_similarity(model, params, X):
    """Mean cosine similarity of the class and distillation tokens, after the
    position embeddings and after each block.

    Defined in :numref:`sec_deit`"""
    cosine = lambda a, b: (a * b).sum(-1) / (
        jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1))
    return [float(cosine(Z[:, 0], Z[:, 1]).mean()) for Z in model.apply(
        {'params': params}, X, method='encode')]

def window_partition(X, window_size):
    """Cut grids of tokens (batch, height, width, channels) into windows of
    shape (batch * no. of windows, window_size, window_size, channels).

    Defined in :numref:`sec_swin`"""
    batch_size, height, width, channels = X.shape
    d2l.check_window_grid((height, width), window_size)
    X = X.reshape(batch_size, height // window_size, window_size,
                  width // window_size, window_size, channels)
    X = X.transpose(0, 1, 3, 2, 4, 5)  # window row, window col, row, col
    return X.reshape(-1, window_size, window_size, channels)

def window_reverse(windows, window_size, grid_size):
    """Put windows back together into grids of tokens: the inverse of
    window_partition.

    Defined in :numref:`sec_swin`"""
    height, width = d2l.check_window_grid(grid_size, window_size)
    channels = windows.shape[-1]
    X = windows.reshape(-1, height // window_size, width // window_size,
                        window_size, window_size, channels)
    X = X.transpose(0, 1, 3, 2, 4, 5)  # grid row, window row, grid col, col
    return X.reshape(-1, height, width, channels)

def relative_position_index(window_size):
    """For each pair (query, key) of the window_size**2 tokens of a window,
    the index of their offset among the (2 * window_size - 1)**2 offsets.

    Defined in :numref:`sec_swin`"""
    rows, cols = np.divmod(np.arange(window_size**2), window_size)
    # Offsets of the query (rows) from the key (columns), shifted to start at 0
    delta_rows = rows[:, None] - rows[None, :] + window_size - 1
    delta_cols = cols[:, None] - cols[None, :] + window_size - 1
    return delta_rows * (2 * window_size - 1) + delta_cols

class WindowAttention(d2l.ViTAttention):
    """Multi-head self-attention in windows, with relative position bias.

    Defined in :numref:`sec_swin`"""
    qkv_bias: bool = True
    window_size: int = 7

    def setup(self):
        super().setup()
        self.relative_position_bias_table = self.param(
            'relative_position_bias_table', nn.initializers.normal(0.02),
            ((2 * self.window_size - 1)**2, self.num_heads))
        self.relative_position_index = jnp.asarray(
            relative_position_index(self.window_size))

    def __call__(self, X, mask=None, training=False):
        # X: (no. of windows, window_size**2, num_hiddens); mask: None or
        # (windows per image, window_size**2, window_size**2)
        num_windows, num_steps, num_hiddens = X.shape
        QKV = self.qkv(X).reshape(num_windows, num_steps, 3,
                                  self.num_heads, -1)
        Q, K, V = QKV.transpose(2, 0, 1, 3, 4)  # (windows, steps, heads, d)
        scores = jnp.einsum('bqhd,bkhd->bhqk', Q, K) / Q.shape[-1]**0.5
        # (tokens, tokens, heads) -> (heads, tokens, tokens)
        bias = self.relative_position_bias_table[self.relative_position_index]
        scores = scores + bias.transpose(2, 0, 1)
        if mask is not None:  # the same mask for the windows of every image
            scores = scores.reshape(-1, mask.shape[0], self.num_heads,
                                    num_steps, num_steps) + mask[:, None]
            scores = scores.reshape(num_windows, self.num_heads, num_steps,
                                    num_steps)
        weights = self.attention_dropout(nn.softmax(scores, axis=-1),
                                         deterministic=not training)
        H = jnp.einsum('bhqk,bkhd->bqhd', weights, V)
        return self.proj(H.reshape(num_windows, num_steps, num_hiddens))

def shifted_window_labels(grid_size, window_size, shift_size):
    """Label each token of the grid with its shifted window, after the roll.

    Defined in :numref:`sec_swin`"""
    height, width = d2l.check_window_grid(grid_size, window_size)
    # The first shift_size rows (columns) get -1; then one label per window
    rows = (jnp.arange(height) - shift_size) // window_size
    cols = (jnp.arange(width) - shift_size) // window_size
    labels = (rows[:, None] + 1) * (width // window_size + 1) + cols[None] + 1
    return jnp.roll(labels, (-shift_size, -shift_size), axis=(0, 1))

def shifted_window_mask(grid_size, window_size, shift_size):
    """Additive attention mask of the shifted windows, of shape (no. of
    windows, window_size**2, window_size**2): 0 between tokens from the same
    region, -100 between tokens from different ones.

    Defined in :numref:`sec_swin`"""
    labels = shifted_window_labels(grid_size, window_size, shift_size)
    windows = window_partition(labels[None, :, :, None], window_size)
    windows = windows.reshape(-1, window_size**2)
    different = windows[:, :, None] != windows[:, None, :]
    return jnp.where(different, -100.0, 0.0)

def show_shifted_windows(labels, mask, window_size):
    """Draw the rolled region labels with the window borders, and the mask of
    each window (dark: the pair may attend, light: masked).

    Defined in :numref:`sec_swin`"""
    d2l.use_svg_display()
    labels, mask = np.asarray(labels), np.asarray(mask)
    fig, axes = d2l.plt.subplots(1, 1 + len(mask), figsize=(
        2.2 * (1 + len(mask)), 2.4))
    axes[0].imshow(labels, cmap='tab20')
    for i in range(labels.shape[0]):
        for j in range(labels.shape[1]):
            axes[0].text(j, i, str(labels[i, j]), ha='center', va='center',
                         fontsize=7)
    for border in np.arange(window_size, labels.shape[0], window_size):
        axes[0].axhline(border - 0.5, color='black', linewidth=2)
    for border in np.arange(window_size, labels.shape[1], window_size):
        axes[0].axvline(border - 0.5, color='black', linewidth=2)
    axes[0].set_title('rolled labels')
    for k, (ax, m) in enumerate(zip(axes[1:], mask)):
        ax.imshow(m != 0, cmap='Blues_r', vmin=0, vmax=1)
        ax.set_title(f'mask of window {k}')
    for ax in axes:
        ax.set_xticks([]), ax.set_yticks([])

class SwinBlock(nn.Module):
    """A Swin Transformer block: attention inside (shifted) windows, then an
    MLP, each with pre-normalization and a residual connection.

    Defined in :numref:`sec_swin`"""
    num_hiddens: int
    mlp_num_hiddens: int
    num_heads: int
    grid_size: tuple
    window_size: int
    shift_size: int = 0
    dropout: float = 0.0

    def setup(self):
        self.grid = d2l.grid_pair(self.grid_size)
        self.window, self.shift = self.window_size, self.shift_size
        if min(self.grid) <= self.window:  # one window: nothing to shift
            self.window, self.shift = min(self.grid), 0
        d2l.check_window_grid(self.grid, self.window)
        self.ln1 = nn.LayerNorm(epsilon=1e-6)
        self.attention = WindowAttention(self.num_hiddens, self.num_heads,
                                         self.dropout, window_size=self.window)
        self.ln2 = nn.LayerNorm(epsilon=1e-6)
        self.mlp = d2l.ViTMLP(self.mlp_num_hiddens, self.num_hiddens,
                              self.dropout)
        self.attention_mask = shifted_window_mask(
            self.grid, self.window, self.shift) if self.shift else None

    def __call__(self, X, training=False):
        # X: (batch size, grid height, grid width, num_hiddens)
        if tuple(X.shape[1:3]) != self.grid:
            raise ValueError(f'the block was built for a {self.grid} '
                             f'grid of tokens, got {tuple(X.shape[1:3])}: '
                             'build it with grid_size=(height, width) of X')
        num_hiddens, shift = X.shape[-1], self.shift
        Y = self.ln1(X)
        if shift:
            Y = jnp.roll(Y, (-shift, -shift), axis=(1, 2))
        windows = window_partition(Y, self.window).reshape(
            -1, self.window**2, num_hiddens)
        windows = self.attention(windows, self.attention_mask, training)
        Y = window_reverse(windows.reshape(-1, self.window, self.window,
                                           num_hiddens),
                           self.window, self.grid)
        if shift:
            Y = jnp.roll(Y, (shift, shift), axis=(1, 2))
        X = X + Y
        return X + self.mlp(self.ln2(X), training=training)

class PatchMerging(nn.Module):
    """Merge each 2x2 group of neighbouring tokens into one twice as wide.

    Defined in :numref:`sec_swin`"""
    num_hiddens: int

    def setup(self):
        self.norm = nn.LayerNorm(epsilon=1e-6)
        self.reduction = nn.Dense(2 * self.num_hiddens, use_bias=False,
                                  kernel_init=nn.initializers.xavier_uniform())

    def __call__(self, X, training=False):
        batch_size, height, width, num_hiddens = X.shape
        height, width = d2l.merged_grid((height, width))
        X = X.reshape(batch_size, height, 2, width, 2, num_hiddens)
        # (batch, height, width, col offset, row offset, num_hiddens)
        X = X.transpose(0, 1, 3, 4, 2, 5)
        X = X.reshape(batch_size, height, width, -1)
        return self.reduction(self.norm(X))

class SwinTransformer(d2l.Classifier):
    """A small Swin Transformer: stages of Swin blocks with patch merging
    between them, mean pooling and a linear head.

    Defined in :numref:`sec_swin`"""
    img_size: int = 96
    patch_size: int = 6
    num_hiddens: int = 32
    depths: tuple = (2, 2, 2)
    num_heads: tuple = (2, 4, 8)
    window_size: int = 4
    mlp_ratio: int = 4
    dropout: float = 0.0
    lr: float = 0.001
    weight_decay: float = 0.05
    num_classes: int = 10
    num_channels: int = 1

    def setup(self):
        if len(self.depths) != len(self.num_heads):
            raise ValueError(f'depths {self.depths} and num_heads '
                             f'{self.num_heads} must give one number per '
                             'stage')
        self.patch_embedding = d2l.PatchEmbedding(
            self.img_size, self.patch_size, self.num_hiddens,
            self.num_channels)
        self.patch_norm = nn.LayerNorm(epsilon=1e-6)
        _, _, grid = d2l.patch_grid(self.img_size, self.patch_size)
        self.grid, width, blks = grid, self.num_hiddens, []
        for stage, (depth, heads) in enumerate(zip(self.depths,
                                                   self.num_heads)):
            if stage > 0:  # half the grid, twice the width
                blks.append(PatchMerging(width))
                grid, width = d2l.merged_grid(grid), 2 * width
            for i in range(depth):  # regular and shifted windows in turn
                blks.append(SwinBlock(width, self.mlp_ratio * width, heads,
                                      grid, self.window_size,
                                      (i % 2) * self.window_size // 2,
                                      self.dropout))
        self.blks = blks
        self.norm = nn.LayerNorm(epsilon=1e-6)
        self.head = nn.Dense(self.num_classes,
                             kernel_init=nn.initializers.zeros)

    def configure_optimizers(self):
        return optax.adamw(self.lr, weight_decay=self.weight_decay)

    def __call__(self, X, training=False):
        X = self.patch_norm(self.patch_embedding(X))
        X = X.reshape(X.shape[0], *self.grid, -1)
        for blk in self.blks:
            X = blk(X, training)
        # (batch size, final grid height, width, channels)
        return self.head(self.norm(X).mean(axis=(1, 2)))

def attention_cost(attention, params, X, num_repeats=2):
    """Fewest seconds of a jitted forward and backward pass of
    `attention(params, X)`, and the bytes of the compiled pass's temporary
    buffers (its inputs and outputs are not among them).

    Defined in :numref:`sec_swin`"""
    loss = lambda params, X: attention(params, X).sum()
    grad = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, X).compile()
    jax.block_until_ready(grad(params, X))  # a warm-up run
    times = []
    for _ in range(num_repeats):
        start = time.perf_counter()
        jax.block_until_ready(grad(params, X))
        times.append(time.perf_counter() - start)
    return min(times), grad.memory_analysis().temp_size_in_bytes

def plot_attention_cost(num_tokens, costs):
    """Time and memory against the number of tokens, on log-log axes, with
    reference lines of slope 2 and 1 through the last global and windowed
    points.

    Defined in :numref:`sec_swin`"""
    d2l.use_svg_display()
    n = np.asarray(num_tokens, dtype=float)
    _, axes = d2l.plt.subplots(1, 2, figsize=(8, 3))
    for k, (ax, ylabel) in enumerate(zip(axes, (
            'seconds, forward + backward', 'bytes kept for backward'))):
        for (name, cost), fmt in zip(costs.items(), ('o-', 's-')):
            ax.loglog(n, [c[k] for c in cost], fmt, label=name)
        for name, slope in (('global', 2), ('windowed', 1)):
            y = costs[name][-1][k] * (n / n[-1])**slope
            ax.loglog(n, y, ':', color='gray')
            # Below the line, next to the second-to-last size: the two lines
            # are far apart there, so their labels never overlap
            ax.annotate(f'slope {slope}', (n[-2], y[-2]), xytext=(4, -12),
                        textcoords='offset points', fontsize=8, color='gray')
        ax.set_xlabel('number of tokens n')
        ax.set_ylabel(ylabel)
        ax.grid(which='major')
        ax.legend(fontsize=8)
    d2l.plt.tight_layout()

def random_masking(noise, mask_ratio):
    """Per-example random masks from noise of shape (batch, no. of patches):
    the indices of the kept patches, the indices that undo the shuffle, and
    the mask (1 for a masked patch, in the patches' own order).

    Defined in :numref:`sec_vit-mae`"""
    num_keep = d2l.num_kept_patches(noise.shape[1], mask_ratio)
    shuffle = noise.argsort(axis=1)  # the patches with the least noise first
    restore = shuffle.argsort(axis=1)
    mask = (restore >= num_keep).astype(jnp.float32)
    return shuffle[:, :num_keep], restore, mask

def take_tokens(X, indices):
    """Tokens of X (batch, no. of tokens, width) by index, per example.

    Defined in :numref:`sec_vit-mae`"""
    return jnp.take_along_axis(X, indices[..., None], axis=1)

def unpatchify(patches, patch_size, num_channels=1):
    """Images (N, H, W, C) from the patch vectors of a square grid, as
    patchify cut them.

    Defined in :numref:`sec_vit-mae`"""
    n, num_patches, _ = patches.shape
    rows = int(num_patches ** 0.5)
    X = patches.reshape(n, rows, rows, patch_size, patch_size, num_channels)
    X = X.transpose(0, 1, 3, 2, 4, 5)  # grid row, row, grid col, col, channel
    return X.reshape(n, rows * patch_size, rows * patch_size, num_channels)

class MaskedAutoencoder(d2l.Module):
    """A masked autoencoder: the chapter's ViT encodes the visible patches;
    a narrower Transformer decodes them with mask tokens into pixels.

    Defined in :numref:`sec_vit-mae`"""
    img_size: int
    patch_size: int
    num_hiddens: int
    mlp_num_hiddens: int
    num_heads: int
    num_blks: int
    decoder_num_hiddens: int
    decoder_mlp_num_hiddens: int
    decoder_num_heads: int
    decoder_num_blks: int
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: float = 0.1
    num_channels: int = 1

    def setup(self):
        self.encoder = d2l.ViT(self.img_size, self.patch_size,
                               self.num_hiddens, self.mlp_num_hiddens,
                               self.num_heads, self.num_blks, 0.0, 0.0,
                               num_channels=self.num_channels,
                               posemb='sincos2d')
        self.setup_decoder()

    def encode(self, X, noise):
        """The encoded class token and visible patches, and the masking.
    
        Defined in :numref:`sec_vit-mae`"""
        vit = self.encoder
        tokens = vit.patch_embedding(X) + vit.pos_embedding[:, 1:]
        keep, restore, mask = random_masking(noise, self.mask_ratio)
        cls_tokens = jnp.broadcast_to(vit.cls_token + vit.pos_embedding[:, :1],
                                      (X.shape[0], 1, self.num_hiddens))
        H = jnp.concatenate((cls_tokens, take_tokens(tokens, keep)), axis=1)
        for blk in vit.blks:
            H = blk(H)
        return vit.head.layers[0](H), restore, mask

    def setup_decoder(self):
        """The decoder's layers: from the encoder's width to its own, the mask
        token, its blocks and the prediction of each patch's pixels.

        Defined in :numref:`sec_vit-mae`"""
        d, xavier = self.decoder_num_hiddens, nn.initializers.xavier_uniform()
        self.decoder_embed = nn.Dense(d, kernel_init=xavier)
        self.mask_token = self.param(
            'mask_token', nn.initializers.normal(stddev=0.02), (1, 1, d))
        grid_size = d2l.patch_grid(self.img_size, self.patch_size)[2]
        self.decoder_pos_embedding = d2l.fixed_position_embedding(
            'sincos2d', grid_size, d)
        self.decoder_blks = [
            d2l.ViTBlock(d, self.decoder_mlp_num_hiddens, self.decoder_num_heads,
                         0.0) for _ in range(self.decoder_num_blks)]
        self.decoder_norm = nn.LayerNorm(epsilon=1e-6)
        self.decoder_pred = nn.Dense(self.patch_size**2 * self.num_channels,
                                     kernel_init=xavier)
    

    def decode(self, H, restore):
        """Predicted pixels of every patch from the encoded visible tokens.
    
        Defined in :numref:`sec_vit-mae`"""
        H = self.decoder_embed(H)
        num_masked = restore.shape[1] - (H.shape[1] - 1)
        mask_tokens = jnp.broadcast_to(
            self.mask_token, (H.shape[0], num_masked, H.shape[2]))
        patches = take_tokens(jnp.concatenate((H[:, 1:], mask_tokens), axis=1),
                              restore)
        H = jnp.concatenate((H[:, :1], patches), axis=1)
        H = H + self.decoder_pos_embedding
        for blk in self.decoder_blks:
            H = blk(H)
        return self.decoder_pred(self.decoder_norm(H)[:, 1:])  # No class token
    

    def __call__(self, X, noise=None, training=False):
        """The predicted pixels of every patch and the mask; `noise` (batch,
        no. of patches) chooses the mask, a new random one if None.

        Defined in :numref:`sec_vit-mae`"""
        if noise is None:  # A new random mask for every image; d2l's Trainer
            # seeds the 'dropout' stream anew in every step
            rows, cols = d2l.patch_grid(self.img_size, self.patch_size)[2]
            noise = jax.random.uniform(self.make_rng('dropout'),
                                       (X.shape[0], rows * cols))
        H, restore, mask = self.encode(X, noise)
        return self.decode(H, restore), mask

    def loss(self, params, X, Y, state, averaged=True):
        """The reconstruction loss of the images X; the labels Y go unused.
    
        Defined in :numref:`sec_vit-mae`"""
        pred, mask = state.apply_fn({'params': params}, *X,
                                    rngs={'dropout': state.dropout_rng})
        target = d2l.patchify(X[0], self.patch_size)
        return masked_patch_loss(pred, target, mask, self.norm_pix_loss), {}

    def configure_optimizers(self):
        """AdamW with a linear warm-up and a cosine decay.
    
        Defined in :numref:`sec_vit-mae`"""
        return d2l.adamw_warmup_cosine(self)

def masked_patch_loss(pred, target, mask, norm_pix_loss=True):
    """The mean squared error of the predicted pixels of the masked patches;
    with norm_pix_loss, each target patch is normalized first.

    Defined in :numref:`sec_vit-mae`"""
    if norm_pix_loss:
        mean = target.mean(axis=-1, keepdims=True)
        var = target.var(axis=-1, keepdims=True, ddof=1)
        target = (target - mean) / (var + 1e-6) ** 0.5
    per_patch = ((pred - target) ** 2).mean(axis=-1)
    return (per_patch * mask).sum() / mask.sum()

def reconstruct(pred, X, mask, patch_size, norm_pix_loss=True):
    """Images with the predicted pixels in the masked patches.

    Defined in :numref:`sec_vit-mae`"""
    target = d2l.patchify(X, patch_size)
    if norm_pix_loss:  # Undo the normalization of each patch
        mean = target.mean(axis=-1, keepdims=True)
        std = (target.var(axis=-1, keepdims=True, ddof=1) + 1e-6) ** 0.5
        pred = pred * std + mean
    mask = mask[..., None]
    return jnp.clip(unpatchify(target * (1 - mask) + pred * mask, patch_size,
                               X.shape[-1]), 0, 1)

class FineTunedViT(d2l.TunedViT):
    """TunedViT that can train only its last linear layer (linear_probe).

    Defined in :numref:`sec_vit-mae`"""
    linear_probe: bool = False

    def configure_optimizers(self):
        optimizer = super().configure_optimizers()
        if not self.linear_probe:
            return optimizer
        # Only the head's linear layer (head/layers_1) changes
        labels = lambda params: flax.traverse_util.path_aware_map(
            lambda path, _: 'train' if path[:2] == ('head', 'layers_1')
            else 'freeze', params)
        return optax.multi_transform(
            {'train': optimizer, 'freeze': optax.set_to_zero()}, labels)

class PretrainedTrainer(d2l.Trainer):
    """A Trainer whose model starts from pretrained parameters: those of
    `pretrained` replace the initial ones of the same path and shape.

    Defined in :numref:`sec_vit-mae`"""
    def __init__(self, pretrained, max_epochs, num_gpus=0,
                 gradient_clip_val=0):
        super().__init__(max_epochs, num_gpus, gradient_clip_val)
        self.pretrained = pretrained

    def init_state(self, model, key, batch=None):
        state = super().init_state(model, key, batch)
        params = flax.traverse_util.flatten_dict(state.params, sep='/')
        for path, value in flax.traverse_util.flatten_dict(
                self.pretrained, sep='/').items():
            if path not in params or params[path].shape != value.shape:
                raise ValueError(
                    f'pretrained parameter {path} {value.shape} has no '
                    'counterpart of that shape in the model: build the '
                    'model with the pretrained one\'s settings')
            params[path] = jnp.array(value)  # A copy: steps donate theirs
        params = flax.traverse_util.unflatten_dict(params, sep='/')
        return state.replace(params=params,
                             opt_state=state.tx.init(params))

def fold_normalization(params, mean=0.5, std=0.5):
    """Parameters that take pixels x in [0, 1] for a model that expects
    pixels (x - mean) / std, with the scaling folded into its patch
    embedding.

    Defined in :numref:`sec_vit-fine-tuning`"""
    conv = params['patch_embedding']['conv']
    kernel = conv['kernel'] / std
    bias = conv['bias'] - (kernel * mean).sum(axis=(0, 1, 2))
    return dict(params, patch_embedding={'conv': {'kernel': kernel,
                                                  'bias': bias}})

def shard_batch(batch, mesh, axis='data'):
    """Split every array of a minibatch along its first axis over the mesh
    axis `axis` (the minibatch a multiple of that axis's devices): each
    device gets its own consecutive share of the examples.

    Defined in :numref:`sec_vit-distributed`"""
    return jax.device_put(tuple(batch), jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec(axis)))

def replicate(tree, mesh):
    """Every array of `tree` (parameters, a train state), whole on every
    device of `mesh`.

    Defined in :numref:`sec_vit-distributed`"""
    return jax.device_put(tree, jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec()))

class DataParallelTrainer(d2l.Trainer):
    """d2l's Trainer on every device of `mesh`: each minibatch split over
    the mesh's `data` axis, the parameters and optimizer state replicated;
    the jitted training step is the Trainer's own. Each device takes an
    equal share: the last minibatch of an epoch loses the examples that
    do not divide evenly.

    Defined in :numref:`sec_vit-distributed`"""
    def __init__(self, max_epochs, mesh, gradient_clip_val=0):
        super().__init__(max_epochs, gradient_clip_val=gradient_clip_val)
        self.mesh = mesh

    def prepare_batch(self, batch):
        n = len(batch[0]) - len(batch[0]) % self.mesh.shape['data']
        return shard_batch(tuple(a[:n] for a in batch), self.mesh)

    def init_state(self, model, key, batch=None):
        return replicate(super().init_state(model, key, batch), self.mesh)

def collectives(compiled):
    """The communication operations of a compiled XLA program, as
    (operation, number of arrays it communicates, the model operation it
    comes from) triples, read from the program's text.

    Defined in :numref:`sec_vit-distributed`"""
    found = []
    for line in compiled.as_text().splitlines():
        match = re.search(r'= (.*) (all-reduce|all-gather|reduce-scatter|'
                          r'all-to-all|collective-permute)(-start)?\(', line)
        if match:
            arrays = len(re.findall(r'\w+\[[\d,]*\]', match[1]))
            origin = re.search(r'op_name="([^":]*)', line)
            found.append((match[2], arrays, origin[1] if origin else ''))
    return found

def examples_per_second(step, state, batch, num_steps=3):
    """Time `num_steps` calls of a jitted training step on one minibatch,
    after a first call that compiles it; returns the examples per second
    and the final state.

    Defined in :numref:`sec_vit-distributed`"""
    state, _ = step(state, batch)
    jax.block_until_ready(state)
    start = time.time()
    for _ in range(num_steps):
        state, _ = step(state, batch)
    jax.block_until_ready(state)  # JAX computes asynchronously
    return num_steps * len(batch[-1]) / (time.time() - start), state

def mlp_tensor_parallel(params, axis='model'):
    """PartitionSpecs for a ViT's parameters with tensor parallelism in the
    MLP of every block: the first layer's kernel and bias split by columns
    over the mesh axis `axis`, the second layer's kernel by rows, every
    other parameter replicated.

    Defined in :numref:`sec_vit-distributed`"""
    P = jax.sharding.PartitionSpec

    def spec(path, leaf):
        names = [getattr(key, 'key', None) for key in path]
        if 'mlp' not in names:
            return P()
        if 'dense1' in names:
            return P(None, axis) if names[-1] == 'kernel' else P(axis)
        return P(axis, None) if names[-1] == 'kernel' else P()
    return jax.tree_util.tree_map_with_path(spec, params)