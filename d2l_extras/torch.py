"""The chapter's PyTorch library, used as ``from d2l_extras import torch as d2l``.

It is d2l 1.0.3's PyTorch library plus the chapter's code: names the chapter
defines come from here (and ``Module`` and ``Classifier``, whose boards plot as
the JAX library's do), every other name (``d2l.Trainer``, ``d2l.plot``) from
d2l's module, so both tabs call the library ``d2l``. The part above the
WARNING marker is written by hand; the part below is the chapter's ``#@save``
code, written by ``d2lbook build lib``.
"""
import math
import os
import subprocess
import sys
import time

import numpy as np
import torch
from d2l import torch as d2l_torch
from torch import nn
from torch.nn import functional as F

from d2l_extras.checks import (check_image_batch, check_position_grid, check_posemb,
                               check_sincos_width, check_token_grid, check_window_grid,
                               grid_pair, merged_grid, num_kept_patches, patch_grid)
from d2l_extras.convert.from_timm import vit_from_timm
from d2l_extras.convert.torch_flax import params_from_torch, params_to_torch
from d2l_extras.data import modules
from d2l_extras.data.download import try_download
from d2l_extras.run import quick_mode, reference_runs, saved_params

# The saved code below says `d2l.ViT` and `d2l.Classifier`, as the notebooks do.
d2l = sys.modules[__name__]


def __getattr__(name):
    """The names of d2l's own PyTorch library that this module does not define."""
    try:
        return getattr(d2l_torch, name)
    except AttributeError:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}') from None


def __dir__():
    return sorted(set(globals()) | set(dir(d2l_torch)))


def run_size(max_epochs, verbose=True, quick_max_epochs=quick_mode.QUICK_MAX_EPOCHS,
             quick_num_train=quick_mode.QUICK_NUM_TRAIN,
             quick_num_val=quick_mode.QUICK_NUM_VAL):
    """Epochs and examples for a training cell: quick mode on a machine
    without a GPU unless D2L_VIT_QUICK says otherwise (see
    ``d2l_extras.run.quick_mode``)."""
    return quick_mode.run_size(max_epochs, torch.cuda.is_available(), verbose,
                               quick_max_epochs, quick_num_train, quick_num_val)


def save_trained(path, model, data, **settings):
    """Save the parameters of a d2l `model` trained on `data` to `path`, with
    what decided them: the hyperparameters of the model and of the data module,
    and the keyword arguments (run size, seed). Writes a new file, then
    renames it."""
    record = {'settings': saved_params.settings_json(model.hparams, data, settings),
              'state_dict': model.state_dict()}
    saved_params.write_atomically(path, lambda file: torch.save(record, file))


def load_trained(path, model, data, **settings):
    """Load into `model` the parameters that `save_trained` saved at `path`
    and return True, if they were trained with the same hyperparameters, data
    and settings; otherwise print why not and return False."""
    def read(file):
        record = torch.load(file, map_location='cpu', weights_only=True)
        return record['settings'], record['state_dict']
    expected = saved_params.settings_json(model.hparams, data, settings)
    state_dict = saved_params.load(path, expected, read)
    if state_dict is None:
        return False
    model.load_state_dict(state_dict)
    return True


def compare_with_reference(page, models, data, run, seed=0, keep_parameters=False):
    """Show the reference runs of a page's `models` (a dict of trained models
    by name; the full settings, recorded once) beside this run's; `data` is
    their data module, or a dict of them by name. A full run with
    D2L_VIT_RECORD set is recorded first, with the parameters if
    `keep_parameters`."""
    keep = keep_parameters and reference_runs.recording_folder(run) is not None
    data = data if isinstance(data, dict) else dict.fromkeys(models, data)
    runs = {name: (model.board, model.hparams, data[name],
                   saved_params.settings_json(model.hparams, data[name],
                                                {'run': run, 'seed': seed}) if keep else None,
                   reference_runs.flatten(params_from_torch(model)['params']) if keep else None)
            for name, model in models.items()}
    return reference_runs.compare(page, 'pytorch', runs, run)


def show_reference(page, name):
    """Say in one line what the reference run of `name` on `page` was (this
    framework's, else the other's), or that none is recorded."""
    reference_runs.show_reference(page, name, 'pytorch')


def load_reference_parameters(page, name, model, data, run, seed=0):
    """Load into `model` the parameters kept by the reference run of `name`
    and return True, if that run trained this model on all of Fashion-MNIST
    with this data module's settings; otherwise print why not and return False."""
    expected = reference_runs.full_settings(model.hparams, data, run, seed)
    flat = reference_runs.load_kept_parameters(page, name, expected)
    if flat is None:
        return False
    params_to_torch({'params': reference_runs.unflatten(flat)}, model)
    return True


def init_xavier_(model):
    """Xavier-uniform weights and zero biases for every linear and convolution
    layer of ``model``, as the Flax models of the JAX tab initialize: a
    convolution's weight counts as the (out, in * kernel size) matrix of the
    linear layer it is, and a layer named ``qkv`` as the three (d, d)
    matrices it stacks, each initialized on its own."""
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            matrix = module.weight.view(module.weight.shape[0], -1)
            for W in matrix.chunk(3 if name.endswith('qkv') else 1):
                nn.init.xavier_uniform_(W)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


# How ViTAttention computes attention when it need not return the weights:
# 'auto', 'always' or 'never' the fused kernel (see use_fused_attention).
FUSED_ATTENTION = 'auto'


def use_fused_attention(dropout, device):
    """Whether ViTAttention calls ``F.scaled_dot_product_attention`` (one
    optimized call that keeps no attention weights) instead of its explicit
    three lines, as ``FUSED_ATTENTION`` says: 'always', 'never', or 'auto',
    which is always except with attention dropout on a CPU, where the kernel
    falls back to an unfused computation slower than the explicit one
    (benchmarks/README.md)."""
    if FUSED_ATTENTION not in ('auto', 'always', 'never'):
        raise ValueError(f'FUSED_ATTENTION={FUSED_ATTENTION!r}: set it to '
                         "'auto', 'always' or 'never'")
    if FUSED_ATTENTION == 'auto':
        return not (dropout > 0 and device.type == 'cpu')
    return FUSED_ATTENTION == 'always'


class Module(d2l_torch.Module):
    """d2l's Module, whose board plots the training loss at least once an
    epoch, as d2l_extras.jax's does: d2l 1.0.3 plots a point every
    num_train_batches / plot_train_per_epoch minibatches, and so none in an
    epoch of one minibatch."""

    def plot(self, key, value, train):
        if not (train and self.trainer.num_train_batches < self.plot_train_per_epoch):
            return super().plot(key, value, train)
        # d2l's every_n would be int(num_train_batches / plot_train_per_epoch) = 0
        self.board.xlabel = 'epoch'
        self.board.draw(self.trainer.train_batch_idx / self.trainer.num_train_batches,
                        value.detach().cpu().numpy(), 'train_' + key, every_n=1)


class Classifier(d2l_torch.Classifier, Module):
    """d2l's Classifier, on the Module above."""


class ImageDataModule(modules.ImageDataModule, d2l_torch.DataModule):
    """A labelled image dataset as NCHW float tensors in [0, 1] (see
    ``d2l_extras.data.modules``)."""
    def convert(self, array):
        return torch.from_numpy(array)


class FashionMNIST(modules.FashionMNISTData, ImageDataModule):
    """Fashion-MNIST as NCHW float tensors in [0, 1].

    d2l's own class downloads through torchvision with no offline fallback;
    this one keeps its interface and adds the stand-in, example caps, an
    optional ``augment(images, rng)`` for the training images and an optional
    ``mix(images, labels, rng)`` (Mixup, CutMix) for the training
    minibatches."""


class CIFAR10(modules.CIFAR10Data, ImageDataModule):
    """CIFAR-10 as NCHW float tensors in [0, 1], with the interface of
    ``FashionMNIST``."""


class UCIDigits(modules.UCIDigitsData, ImageDataModule):
    """The UCI handwritten digits of scikit-learn (8x8 pixels, 10 classes), as
    NCHW float tensors in [0, 1], with the interface of ``FashionMNIST``; they
    need no download."""

#################   WARNING   ################
# The below part is generated automatically through:
#    d2lbook build lib
# Don't edit it directly

class PatchEmbedding(nn.Module):
    """Cut images into patches and embed each patch linearly.

    Defined in :numref:`sec_vision-transformer`"""
    def __init__(self, img_size=96, patch_size=16, num_hiddens=512,
                 num_channels=1):
        super().__init__()
        self.img_size, self.patch_size, self.grid_size = d2l.patch_grid(
            img_size, patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.num_channels = num_channels
        self.conv = nn.Conv2d(num_channels, num_hiddens,
                              kernel_size=patch_size, stride=patch_size)

    def forward(self, X):
        d2l.check_image_batch(X.shape, self.num_channels, self.img_size,
                              channels_last=False)
        # Output shape: (batch size, no. of patches, num_hiddens)
        return self.conv(X).flatten(2).transpose(1, 2)

def patchify(X, patch_size):
    """Cut NCHW images into patches, each flattened into one vector.

    Defined in :numref:`sec_vision-transformer`"""
    # Output shape: (batch size, no. of patches, channels * patch_size**2)
    batch, channels, height, width = X.shape
    X = X.reshape(batch, channels, height // patch_size, patch_size,
                  width // patch_size, patch_size)
    X = X.permute(0, 2, 4, 1, 3, 5)  # grid row, grid col, channel, row, col
    return X.reshape(batch, -1, channels * patch_size**2)

class ViTMLP(nn.Module):
    """The MLP of a ViT encoder block.

    Defined in :numref:`sec_vision-transformer`"""
    def __init__(self, mlp_num_hiddens, mlp_num_outputs, dropout=0.5):
        super().__init__()
        self.dense1 = nn.LazyLinear(mlp_num_hiddens)
        self.gelu = nn.GELU()
        self.dropout1 = nn.Dropout(dropout)
        self.dense2 = nn.LazyLinear(mlp_num_outputs)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout2(self.dense2(self.dropout1(self.gelu(
            self.dense1(x)))))

class ViTAttention(nn.Module):
    """Multi-head self-attention; one linear layer makes Q, K and V.

    Defined in :numref:`sec_vision-transformer`"""
    def __init__(self, num_hiddens, num_heads, dropout, qkv_bias=False):
        super().__init__()
        if num_hiddens % num_heads:
            raise ValueError(f'num_hiddens={num_hiddens} is not divisible by '
                             f'num_heads={num_heads}: every head needs the '
                             'same width')
        self.num_heads = num_heads
        self.qkv = nn.Linear(num_hiddens, 3 * num_hiddens, bias=qkv_bias)
        self.attention_dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(num_hiddens, num_hiddens)

    def forward(self, X, return_weights=False):
        batch_size, num_steps, num_hiddens = X.shape
        # Shape of Q, K, V: (batch size, num_heads, no. of tokens, head width)
        Q, K, V = self.qkv(X).reshape(batch_size, num_steps, 3, self.num_heads,
                                      -1).permute(2, 0, 3, 1, 4)
        dropout = self.attention_dropout.p if self.training else 0.0
        if return_weights or not d2l.use_fused_attention(dropout, X.device):
            # softmax(Q K^T / sqrt(head width)) V, step by step
            scores = Q @ K.transpose(2, 3) / Q.shape[-1]**0.5
            weights = F.softmax(scores, dim=-1)
            H = self.attention_dropout(weights) @ V
        else:  # The same in one fused kernel, which keeps no weights
            weights = None
            H = F.scaled_dot_product_attention(Q, K, V, dropout_p=dropout)
        # Concatenate the heads: (batch size, no. of tokens, num_hiddens)
        H = H.transpose(1, 2).reshape(batch_size, num_steps, num_hiddens)
        return self.proj(H), weights

class ViTBlock(nn.Module):
    """A pre-normalization Transformer encoder block.

    Defined in :numref:`sec_vision-transformer`"""
    def __init__(self, num_hiddens, mlp_num_hiddens, num_heads, dropout,
                 use_bias=False):
        super().__init__()
        self.ln1 = nn.LayerNorm(num_hiddens, eps=1e-6)
        self.attention = ViTAttention(num_hiddens, num_heads, dropout,
                                      qkv_bias=use_bias)
        self.ln2 = nn.LayerNorm(num_hiddens, eps=1e-6)
        self.mlp = ViTMLP(mlp_num_hiddens, num_hiddens, dropout)

    def forward(self, X, return_weights=False):
        Y, weights = self.attention(self.ln1(X), return_weights)
        X = X + Y
        X = X + self.mlp(self.ln2(X))
        return (X, weights) if return_weights else X

class ViT(d2l.Classifier):
    """Vision Transformer.

    Defined in :numref:`sec_vision-transformer`"""
    def __init__(self, img_size, patch_size, num_hiddens, mlp_num_hiddens,
                 num_heads, num_blks, emb_dropout, blk_dropout, lr=0.1,
                 use_bias=False, num_classes=10, num_channels=1, pool='cls',
                 posemb='learn'):
        super().__init__()
        self.save_hyperparameters()
        if pool not in ('cls', 'mean'):
            raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")
        self.patch_embedding = PatchEmbedding(img_size, patch_size,
                                              num_hiddens, num_channels)
        if pool == 'cls':
            self.cls_token = nn.Parameter(torch.zeros(1, 1, num_hiddens))
        num_steps = self.num_prefix_tokens + self.patch_embedding.num_patches
        if posemb == 'learn':
            self.pos_embedding = nn.Parameter(
                0.02 * torch.randn(1, num_steps, num_hiddens))
        else:  # Fixed: computed for the grid, not saved with the parameters
            self.register_buffer('pos_embedding', d2l.fixed_position_embedding(
                posemb, self.patch_embedding.grid_size, num_hiddens,
                self.num_prefix_tokens), persistent=False)
        self.dropout = nn.Dropout(emb_dropout)
        self.blks = nn.Sequential(*[
            ViTBlock(num_hiddens, mlp_num_hiddens, num_heads, blk_dropout,
                     use_bias) for _ in range(num_blks)])
        self.head = nn.Sequential(nn.LayerNorm(num_hiddens, eps=1e-6),
                                  nn.Linear(num_hiddens, num_classes))
        self.initialize_weights()

    @property
    def num_prefix_tokens(self):
        """The tokens before the patches: the class token, if any."""
        return 1 if self.pool == 'cls' else 0

    def initialize_weights(self):
        with torch.no_grad():  # Create the lazy layers' weights
            self(torch.zeros(1, self.num_channels,
                             *self.patch_embedding.img_size))
        d2l.init_xavier_(self)  # as the JAX tab's layers initialize
        nn.init.zeros_(self.head[1].weight)

    def forward(self, X, return_weights=False):
        X = self.patch_embedding(X)
        if self.pool == 'cls':
            X = torch.cat((self.cls_token.expand(X.shape[0], -1, -1), X), 1)
        X = self.dropout(X + self.pos_embedding)
        attention_weights = []
        for blk in self.blks:
            if return_weights:
                X, weights = blk(X, return_weights=True)
                attention_weights.append(weights)
            else:
                X = blk(X)
        Y = self.head(X[:, 0] if self.pool == 'cls' else X.mean(dim=1))
        return (Y, attention_weights) if return_weights else Y

    def with_img_size(self, img_size, mode='bicubic'):
        """A copy of the model for another image size.
    
        Defined in :numref:`sec_vision-transformer`"""
        model = ViT(**dict(self.hparams, img_size=img_size))
        state = self.state_dict()
        if self.posemb == 'learn':  # fixed ones are computed for the new grid
            state['pos_embedding'] = resize_position_embedding(
                state['pos_embedding'], self.patch_embedding.grid_size,
                model.patch_embedding.grid_size, self.num_prefix_tokens, mode)
        model.load_state_dict(state)
        return model.to(self.pos_embedding.device)

    def with_num_classes(self, num_classes):
        """A copy of the model with a new, zero linear head for `num_classes`
        classes; every other parameter is copied.

        Defined in :numref:`sec_vit-fine-tuning`"""
        model = d2l.ViT(**dict(self.hparams, num_classes=num_classes))
        state = {name: value for name, value in self.state_dict().items()
                 if not name.startswith('head.1.')}
        model.load_state_dict(state, strict=False)
        return model.to(next(self.parameters()).device)

def evaluate_accuracy(model, data):
    """The fraction of validation examples that the model classifies right.

    Defined in :numref:`sec_vision-transformer`"""
    model.eval()
    device = next(model.parameters()).device
    correct = total = 0
    with torch.no_grad():
        for X, y in data.val_dataloader():
            y_hat = model(X.to(device)).argmax(dim=1)
            correct += (y_hat == y.to(device)).sum().item()
            total += len(y)
    return correct / total

def resize_position_embedding(pos_embedding, old_grid, new_grid,
                              num_prefix_tokens=1, mode='bicubic'):
    """Interpolate position embeddings to a new grid of patches in 2D.

    Defined in :numref:`sec_vision-transformer`"""
    d2l.check_position_grid(pos_embedding.shape[1], num_prefix_tokens,
                            old_grid)
    prefix = pos_embedding[:, :num_prefix_tokens]
    # (1, h * w, d) -> (1, d, h, w): an image with d channels
    grid = pos_embedding[:, num_prefix_tokens:].reshape(
        1, old_grid[0], old_grid[1], -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=tuple(new_grid), mode=mode,
                         antialias=True, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], -1)
    return torch.cat((prefix, grid), dim=1)

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
    """Seconds of each of `num_repeats` training steps after a warm-up step.

    Defined in :numref:`sec_vit-exercise-image-size`"""
    optimizer = model.configure_optimizers()
    model.train()

    def step():
        loss = model.loss(model(X), y)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1)
        optimizer.step()
        if X.is_cuda:  # CUDA runs asynchronously: wait for the step to end
            torch.cuda.synchronize()

    step()
    times = []
    for _ in range(num_repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return np.array(times)

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

def warmup_cosine(step, warmup_steps, total_steps):
    """Learning-rate factor: linear warm-up from 0, then cosine decay to 0.

    Defined in :numref:`sec_vit-exercise-accuracy`"""
    if step < warmup_steps:
        return step / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1)
    return 0.5 * (1 + math.cos(math.pi * progress))

def adamw_warmup_cosine(module):
    """AdamW at the module's lr and weight_decay, with a linear warm-up over
    its `warmup` fraction of the trainer's steps, then a cosine decay to 0.

    Defined in :numref:`sec_vit-exercise-accuracy`"""
    optimizer = torch.optim.AdamW(module.parameters(), lr=module.lr,
                                  weight_decay=module.weight_decay)
    total_steps = module.trainer.max_epochs * module.trainer.num_train_batches
    warmup_steps = round(module.warmup * total_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: warmup_cosine(step, warmup_steps, total_steps))
    # d2l's Trainer only calls optimizer.step(): advance the schedule there
    optimizer.register_step_post_hook(lambda *args: schedule.step())
    return optimizer

class TunedViT(d2l.ViT):
    """The chapter's ViT with AdamW and a schedule, and label smoothing.

    Defined in :numref:`sec_vit-exercise-accuracy`"""
    def __init__(self, *args, adamw=False, weight_decay=0.05, warmup=0.1,
                 label_smoothing=0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.adamw, self.weight_decay = adamw, weight_decay
        self.warmup, self.label_smoothing = warmup, label_smoothing

    def loss(self, Y_hat, Y, averaged=True):
        return F.cross_entropy(Y_hat.reshape(-1, Y_hat.shape[-1]),
                               Y.reshape(-1),
                               reduction='mean' if averaged else 'none',
                               label_smoothing=self.label_smoothing)

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
    """Cut NCHW images into the sequence of patches that a ViT reads.

    Defined in :numref:`sec_vit-what-it-learns`"""
    d2l.patch_grid(tuple(X.shape[2:]), patch_size)  # refuse leftover pixels
    # Shape: (batch size, no. of patches, channels, patch_size, patch_size)
    return d2l.patchify(X, patch_size).reshape(
        X.shape[0], -1, X.shape[1], patch_size, patch_size)

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

def patch_embedding_components(weight, num_components=28):
    """The first principal components of the patch-embedding filters.

    `weight` is the patch convolution's weight, (num_hiddens, channels, p, p):
    num_hiddens filters, each a point in channels * p * p dimensions. Returns
    the components shaped like filters, (num_components, channels, p, p), as
    orthonormal directions, and the fraction of the filters' variance that
    each explains. A component's sign is arbitrary; we make its largest entry
    positive, so that both frameworks draw the same pictures.

    Defined in :numref:`sec_vit-what-it-learns`"""
    filters = weight.detach().reshape(weight.shape[0], -1)
    if not 0 < num_components <= min(filters.shape):
        raise ValueError(f'num_components={num_components} must be between '
                         f'1 and {min(filters.shape)} for '
                         f'{tuple(filters.shape)} filters')
    filters = filters - filters.mean(dim=0)  # PCA works on centred data
    _, S, Vt = torch.linalg.svd(filters, full_matrices=False)
    components = Vt[:num_components]
    largest = components.gather(1, components.abs().argmax(1, keepdim=True))
    explained = S**2 / (S**2).sum()
    return (components * largest.sign()).reshape(-1, *weight.shape[1:]), \
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
    P = pos_embedding.detach()[0, num_prefix_tokens:]
    P = P / P.norm(dim=-1, keepdim=True)
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
        A = A.mean(dim=1) + torch.eye(A.shape[-1], device=A.device)
        A = A / A.sum(dim=-1, keepdim=True)  # rows sum to 1 again
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
    distances = torch.as_tensor(patch_distances(grid_size, patch_size),
                                device=attention.device)
    A = attention[:, :, 1:, 1:]
    A = A / A.sum(dim=-1, keepdim=True)
    return (A * distances).sum(dim=-1).mean(dim=(0, 2))

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
    """Images (N, C, H, W) whose patch k (row by row) is patch order[k].

    Defined in :numref:`sec_vit-position-embeddings`"""
    n, c, h, w = X.shape
    rows, cols = h // patch_size, w // patch_size
    P = X.reshape(n, c, rows, patch_size, cols, patch_size)
    P = P.permute(0, 2, 4, 1, 3, 5).reshape(n, rows * cols, -1)
    P = P[:, torch.as_tensor(order)]
    P = P.reshape(n, rows, cols, c, patch_size, patch_size)
    return P.permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)

def sincos_1d_position_embedding(num_steps, num_hiddens,
                                 temperature=10000.0):
    """The Transformer's sine-cosine encoding of positions 0, 1, ...:
    shape (num_steps, num_hiddens), sines in even and cosines in odd
    columns.

    Defined in :numref:`sec_vit-position-embeddings`"""
    d2l.check_sincos_width(num_hiddens, 2)
    positions = torch.arange(num_steps, dtype=torch.float32)[:, None]
    exponents = torch.arange(0, num_hiddens, 2) / num_hiddens
    angles = positions / temperature ** exponents
    P = torch.zeros(num_steps, num_hiddens)
    P[:, 0::2], P[:, 1::2] = torch.sin(angles), torch.cos(angles)
    return P

def sincos_position_embedding(grid_size, num_hiddens,
                              temperature=10000.0):
    """2D sine-cosine embeddings of a (rows, columns) grid of patches, row by
    row: shape (rows * columns, num_hiddens), the sines and cosines of the
    column, then those of the row.

    Defined in :numref:`sec_vit-position-embeddings`"""
    rows, cols = d2l.grid_pair(grid_size)
    d2l.check_sincos_width(num_hiddens, 4)
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols),
                          indexing='ij')
    omega = torch.arange(num_hiddens // 4) / (num_hiddens // 4 - 1)
    omega = 1.0 / temperature ** omega
    c, r = c.reshape(-1, 1) * omega, r.reshape(-1, 1) * omega
    return torch.cat((c.sin(), c.cos(), r.sin(), r.cos()), dim=1)

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
        P = torch.zeros(rows * cols, num_hiddens)
    else:
        raise ValueError("learned embeddings are parameters of the model")
    prefix = torch.zeros(num_prefix_tokens, num_hiddens)
    return torch.cat((prefix, P))[None]

class ResNet18(d2l.Classifier):
    """ResNet-18 with the stage widths as a parameter.

    Defined in :numref:`sec_vit-vs-cnn`"""
    def __init__(self, arch=((2, 64), (2, 128), (2, 256), (2, 512)), lr=0.1,
                 num_classes=10, num_channels=1, small_images=False):
        super().__init__()
        self.save_hyperparameters()
        width = arch[0][1]
        if small_images:
            self.stem = nn.Sequential(
                nn.LazyConv2d(width, kernel_size=3, padding=1),
                nn.LazyBatchNorm2d(), nn.ReLU())
        else:
            self.stem = nn.Sequential(
                nn.LazyConv2d(width, kernel_size=7, stride=2, padding=3),
                nn.LazyBatchNorm2d(), nn.ReLU(),
                nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        self.stages = nn.Sequential(*[
            nn.Sequential(*[
                d2l.Residual(width, use_1x1conv=downsample,
                             strides=2 if downsample else 1)
                for downsample in [stage > 0] + [False] * (num_blks - 1)])
            for stage, (num_blks, width) in enumerate(arch)])
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.LazyLinear(num_classes))
        self.initialize_weights()

    def initialize_weights(self):
        self.eval()  # Create the lazy layers' weights; keep the BN statistics
        with torch.no_grad():
            self(torch.zeros(1, self.num_channels, 32, 32))
        self.train()
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode='fan_out',
                                        nonlinearity='relu')
                nn.init.zeros_(module.bias)
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, X):
        return self.head(self.stages(self.stem(X)))

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

def drop_path(X, p, training, keep=None):
    """Stochastic depth: in training, zero each example (along the first
    axis of X) with probability p and scale the others by 1 / (1 - p); the
    identity in evaluation. `keep` (one boolean per example) replaces the
    random draw.

    Defined in :numref:`sec_vit-training-recipe`"""
    if not training or p == 0:
        return X
    if keep is None:
        keep = torch.rand(X.shape[0], device=X.device) < 1 - p
    keep = keep.reshape(-1, *[1] * (X.dim() - 1))
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
    def __init__(self, *args, drop_prob=0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.drop_prob = drop_prob

    def forward(self, X, return_weights=False):
        Y, weights = self.attention(self.ln1(X), return_weights)
        X = X + drop_path(Y, self.drop_prob, self.training)
        X = X + drop_path(self.mlp(self.ln2(X)), self.drop_prob, self.training)
        return (X, weights) if return_weights else X

class RecipeViT(d2l.TunedViT):
    """TunedViT with stochastic depth, and a loss that takes soft labels.

    Defined in :numref:`sec_vit-training-recipe`"""
    def __init__(self, *args, drop_path_rate=0.0, **kwargs):
        self.drop_path_rate = drop_path_rate  # initialize_weights needs it
        super().__init__(*args, **kwargs)

    def initialize_weights(self):
        # ViT.__init__ calls this once its layers exist. Replace its blocks,
        # drawing their random weights from a copy of the generator, so that
        # the ViT's initialization below draws what it would draw
        with torch.random.fork_rng(devices=[]):
            self.blks = nn.Sequential(*[
                DropPathBlock(self.num_hiddens, self.mlp_num_hiddens,
                              self.num_heads, self.blk_dropout, self.use_bias)
                for _ in range(self.num_blks)])
        super().initialize_weights()  # its forward pass draws no drop path
        rates = drop_path_rates(self.drop_path_rate, self.num_blks)
        for blk, rate in zip(self.blks, rates):
            blk.drop_prob = rate

    def loss(self, Y_hat, Y, averaged=True):
        Y_hat = Y_hat.reshape(-1, Y_hat.shape[-1])
        if not Y.is_floating_point():  # class indices: one-hot labels
            Y = F.one_hot(Y.reshape(-1), Y_hat.shape[-1]).float()
        eps = self.label_smoothing
        targets = (1 - eps) * Y + eps / Y_hat.shape[-1]
        losses = -(targets * F.log_softmax(Y_hat, dim=-1)).sum(dim=-1)
        return losses.mean() if averaged else losses

def average_heads(class_logits, dist_logits):
    """Logits whose softmax is the mean of the two heads' softmax outputs.

    Defined in :numref:`sec_deit`"""
    log_probs = torch.stack((F.log_softmax(class_logits, dim=-1),
                             F.log_softmax(dist_logits, dim=-1)))
    return torch.logsumexp(log_probs, dim=0) - math.log(2)

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
    def __init__(self, *args, distillation='hard', temperature=3.0,
                 teacher_weight=0.5, **kwargs):
        check_distillation(distillation, temperature, teacher_weight)
        super().__init__(*args, **kwargs)
        self.distillation, self.temperature = distillation, temperature
        self.teacher_weight = teacher_weight

    num_prefix_tokens = 2  # the class and the distillation token

    def initialize_weights(self):
        # ViT.__init__ calls this once its layers exist: first add the
        # distillation token and the distillation head
        if self.pool != 'cls':
            raise ValueError('DistillationViT reads the class token: pool '
                             f"must be 'cls', got {self.pool!r}")
        self.dist_token = nn.Parameter(
            0.02 * torch.randn(1, 1, self.num_hiddens))
        self.head_dist = nn.Linear(self.num_hiddens, self.num_classes)
        super().initialize_weights()  # Xavier everywhere, zero class head
        nn.init.zeros_(self.head_dist.weight)

    def encode(self, X):
        """The tokens after the position embeddings and after each block."""
        X = self.patch_embedding(X)
        prefix = torch.cat((self.cls_token, self.dist_token), dim=1)
        X = torch.cat((prefix.expand(X.shape[0], -1, -1), X), dim=1)
        outputs = [self.dropout(X + self.pos_embedding)]
        for blk in self.blks:
            outputs.append(blk(outputs[-1]))
        return outputs

    def heads(self, X):
        """The logits of the class head and of the distillation head."""
        X = self.head[0](self.encode(X)[-1][:, :2])  # the shared layer norm
        return self.head[1](X[:, 0]), self.head_dist(X[:, 1])

    def forward(self, X):
        return average_heads(*self.heads(X))

    def training_step(self, batch):
        """The distillation loss of one minibatch, with the trainer's teacher.
    
        Defined in :numref:`sec_deit`"""
        X, y = batch
        teacher_logits = None
        if self.distillation != 'none':
            with torch.no_grad():  # the teacher only predicts
                teacher_logits = self.trainer.teacher(X)
        loss = distillation_loss(*self.heads(X), y, teacher_logits,
                                 self.distillation, self.temperature,
                                 self.teacher_weight)
        self.plot('loss', loss, train=True)
        return loss

def distillation_loss(class_logits, dist_logits, labels,
                      teacher_logits, distillation='hard',
                      temperature=3.0, teacher_weight=0.5):
    """DeiT's objective for a student with a class and a distillation head.

    Defined in :numref:`sec_deit`"""
    check_distillation(distillation, temperature, teacher_weight)
    class_loss = F.cross_entropy(class_logits, labels)
    if distillation == 'none':  # The distillation head learns the labels
        dist_loss = F.cross_entropy(dist_logits, labels)
    elif distillation == 'hard':  # ... the teacher's decisions
        dist_loss = F.cross_entropy(dist_logits, teacher_logits.argmax(dim=-1))
    else:  # KL(teacher || student) at temperature tau, mean over examples
        dist_loss = temperature**2 * F.kl_div(
            F.log_softmax(dist_logits / temperature, dim=-1),
            F.log_softmax(teacher_logits.detach() / temperature, dim=-1),
            reduction='batchmean', log_target=True)
    return (1 - teacher_weight) * class_loss + teacher_weight * dist_loss

class DistillationTrainer(d2l.Trainer):
    """A trainer whose students learn from a fixed teacher.

    Defined in :numref:`sec_deit`"""
    def __init__(self, teacher, max_epochs, num_gpus=0, gradient_clip_val=0):
        super().__init__(max_epochs, num_gpus, gradient_clip_val)
        self.teacher = teacher.eval()  # batch norm: the running statistics

def head_accuracies(model, data):
    """Validation accuracy of the class head, the distillation head and of
    the mean of their softmax outputs.

    Defined in :numref:`sec_deit`"""
    model.eval()
    device = next(model.parameters()).device
    correct, total = torch.zeros(3), 0
    with torch.no_grad():
        for X, y in data.val_dataloader():
            X, y = X.to(device), y.to(device)
            class_logits, dist_logits = model.heads(X)
            average = average_heads(class_logits, dist_logits)
            for i, logits in enumerate((class_logits, dist_logits, average)):
                correct[i] += (logits.argmax(dim=1) == y).sum().item()
            total += len(y)
    return (correct / total).tolist()

def token_similarity(model, X):
    """Mean cosine similarity of the class and distillation tokens, after the
    position embeddings and after each block.

    Defined in :numref:`sec_deit`"""
    model.eval()
    with torch.no_grad():
        return [float(F.cosine_similarity(Z[:, 0], Z[:, 1], dim=-1).mean())
                for Z in model.encode(X)]

def window_partition(X, window_size):
    """Cut grids of tokens (batch, height, width, channels) into windows of
    shape (batch * no. of windows, window_size, window_size, channels).

    Defined in :numref:`sec_swin`"""
    batch_size, height, width, channels = X.shape
    d2l.check_window_grid((height, width), window_size)
    X = X.reshape(batch_size, height // window_size, window_size,
                  width // window_size, window_size, channels)
    X = X.permute(0, 1, 3, 2, 4, 5)  # window row, window col, row, col
    return X.reshape(-1, window_size, window_size, channels)

def window_reverse(windows, window_size, grid_size):
    """Put windows back together into grids of tokens: the inverse of
    window_partition.

    Defined in :numref:`sec_swin`"""
    height, width = d2l.check_window_grid(grid_size, window_size)
    channels = windows.shape[-1]
    X = windows.reshape(-1, height // window_size, width // window_size,
                        window_size, window_size, channels)
    X = X.permute(0, 1, 3, 2, 4, 5)  # grid row, window row, grid col, col
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
    def __init__(self, num_hiddens, num_heads, dropout, qkv_bias=True,
                 window_size=7):
        super().__init__(num_hiddens, num_heads, dropout, qkv_bias)
        self.window_size = window_size
        self.relative_position_bias_table = nn.Parameter(
            0.02 * torch.randn((2 * window_size - 1)**2, num_heads))
        self.register_buffer('relative_position_index', torch.as_tensor(
            relative_position_index(window_size)), persistent=False)

    def forward(self, X, mask=None):
        # X: (no. of windows, window_size**2, num_hiddens); mask: None or
        # (windows per image, window_size**2, window_size**2)
        num_windows, num_steps, num_hiddens = X.shape
        QKV = self.qkv(X).reshape(num_windows, num_steps, 3,
                                  self.num_heads, -1)
        Q, K, V = QKV.permute(2, 0, 3, 1, 4)  # (windows, heads, steps, d)
        scores = Q @ K.transpose(2, 3) / Q.shape[-1]**0.5
        # (tokens, tokens, heads) -> (heads, tokens, tokens)
        bias = self.relative_position_bias_table[self.relative_position_index]
        scores = scores + bias.permute(2, 0, 1)
        if mask is not None:  # the same mask for the windows of every image
            scores = scores.reshape(-1, mask.shape[0], self.num_heads,
                                    num_steps, num_steps) + mask[:, None]
            scores = scores.reshape(num_windows, self.num_heads, num_steps,
                                    num_steps)
        weights = self.attention_dropout(F.softmax(scores, dim=-1))
        H = (weights @ V).transpose(1, 2).reshape(num_windows, num_steps,
                                                  num_hiddens)
        return self.proj(H)

def shifted_window_labels(grid_size, window_size, shift_size):
    """Label each token of the grid with its shifted window, after the roll.

    Defined in :numref:`sec_swin`"""
    height, width = d2l.check_window_grid(grid_size, window_size)
    # The first shift_size rows (columns) get -1; then one label per window
    rows = torch.div(torch.arange(height) - shift_size, window_size,
                     rounding_mode='floor')
    cols = torch.div(torch.arange(width) - shift_size, window_size,
                     rounding_mode='floor')
    labels = (rows[:, None] + 1) * (width // window_size + 1) + cols[None] + 1
    return torch.roll(labels, (-shift_size, -shift_size), dims=(0, 1))

def shifted_window_mask(grid_size, window_size, shift_size):
    """Additive attention mask of the shifted windows, of shape (no. of
    windows, window_size**2, window_size**2): 0 between tokens from the same
    region, -100 between tokens from different ones.

    Defined in :numref:`sec_swin`"""
    labels = shifted_window_labels(grid_size, window_size, shift_size)
    windows = window_partition(labels[None, :, :, None], window_size)
    windows = windows.reshape(-1, window_size**2)
    different = windows[:, :, None] != windows[:, None, :]
    return torch.where(different, -100.0, 0.0)

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
    def __init__(self, num_hiddens, mlp_num_hiddens, num_heads, grid_size,
                 window_size, shift_size=0, dropout=0):
        super().__init__()
        self.grid_size = d2l.grid_pair(grid_size)
        if min(self.grid_size) <= window_size:  # one window: nothing to shift
            window_size, shift_size = min(self.grid_size), 0
        d2l.check_window_grid(self.grid_size, window_size)
        self.window_size, self.shift_size = window_size, shift_size
        self.ln1 = nn.LayerNorm(num_hiddens, eps=1e-6)
        self.attention = WindowAttention(num_hiddens, num_heads, dropout,
                                         window_size=window_size)
        self.ln2 = nn.LayerNorm(num_hiddens, eps=1e-6)
        self.mlp = d2l.ViTMLP(mlp_num_hiddens, num_hiddens, dropout)
        self.register_buffer('attention_mask', shifted_window_mask(
            self.grid_size, window_size, shift_size) if shift_size else None,
            persistent=False)

    def forward(self, X):
        # X: (batch size, grid height, grid width, num_hiddens)
        if tuple(X.shape[1:3]) != self.grid_size:
            raise ValueError(f'the block was built for a {self.grid_size} '
                             f'grid of tokens, got {tuple(X.shape[1:3])}: '
                             'build it with grid_size=(height, width) of X')
        num_hiddens, shift = X.shape[-1], self.shift_size
        Y = self.ln1(X)
        if shift:
            Y = torch.roll(Y, (-shift, -shift), dims=(1, 2))
        windows = window_partition(Y, self.window_size).reshape(
            -1, self.window_size**2, num_hiddens)
        windows = self.attention(windows, self.attention_mask)
        Y = window_reverse(windows.reshape(-1, self.window_size,
                                           self.window_size, num_hiddens),
                           self.window_size, self.grid_size)
        if shift:
            Y = torch.roll(Y, (shift, shift), dims=(1, 2))
        X = X + Y
        return X + self.mlp(self.ln2(X))

class PatchMerging(nn.Module):
    """Merge each 2x2 group of neighbouring tokens into one twice as wide.

    Defined in :numref:`sec_swin`"""
    def __init__(self, num_hiddens):
        super().__init__()
        self.norm = nn.LayerNorm(4 * num_hiddens, eps=1e-6)
        self.reduction = nn.Linear(4 * num_hiddens, 2 * num_hiddens,
                                   bias=False)

    def forward(self, X):
        batch_size, height, width, num_hiddens = X.shape
        height, width = d2l.merged_grid((height, width))
        X = X.reshape(batch_size, height, 2, width, 2, num_hiddens)
        # (batch, height, width, col offset, row offset, num_hiddens)
        X = X.permute(0, 1, 3, 4, 2, 5)
        X = X.reshape(batch_size, height, width, -1)
        return self.reduction(self.norm(X))

class SwinTransformer(d2l.Classifier):
    """A small Swin Transformer: stages of Swin blocks with patch merging
    between them, mean pooling and a linear head.

    Defined in :numref:`sec_swin`"""
    def __init__(self, img_size=96, patch_size=6, num_hiddens=32,
                 depths=(2, 2, 2), num_heads=(2, 4, 8), window_size=4,
                 mlp_ratio=4, dropout=0, lr=0.001, weight_decay=0.05,
                 num_classes=10, num_channels=1):
        super().__init__()
        self.save_hyperparameters()
        if len(depths) != len(num_heads):
            raise ValueError(f'depths {depths} and num_heads {num_heads} must '
                             'give one number per stage')
        self.patch_embedding = d2l.PatchEmbedding(img_size, patch_size,
                                                  num_hiddens, num_channels)
        self.patch_norm = nn.LayerNorm(num_hiddens, eps=1e-6)
        grid, width, blks = self.patch_embedding.grid_size, num_hiddens, []
        for stage, (depth, heads) in enumerate(zip(depths, num_heads)):
            if stage > 0:  # half the grid, twice the width
                blks.append(PatchMerging(width))
                grid, width = d2l.merged_grid(grid), 2 * width
            for i in range(depth):  # regular and shifted windows in turn
                blks.append(SwinBlock(width, mlp_ratio * width, heads, grid,
                                      window_size, (i % 2) * window_size // 2,
                                      dropout))
        self.blks = nn.Sequential(*blks)
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.head = nn.Linear(width, num_classes)
        self.initialize_weights()

    def initialize_weights(self):
        with torch.no_grad():  # Create the lazy layers' weights
            self(torch.zeros(1, self.num_channels,
                             *self.patch_embedding.img_size))
        d2l.init_xavier_(self)  # as the JAX tab's layers initialize
        for module in self.modules():
            if isinstance(module, WindowAttention):
                nn.init.normal_(module.relative_position_bias_table, std=0.02)
        nn.init.zeros_(self.head.weight)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr,
                                 weight_decay=self.weight_decay)

    def forward(self, X):
        X = self.patch_norm(self.patch_embedding(X))
        X = X.reshape(X.shape[0], *self.patch_embedding.grid_size, -1)
        X = self.blks(X)  # (batch size, final grid height, width, channels)
        return self.head(self.norm(X).mean(dim=(1, 2)))

def attention_cost(attention, params, X, num_repeats=2):
    """Fewest seconds of a forward and backward pass of `attention(X)`, and the
    bytes of the tensors that autograd saves for the backward pass, without X
    and the parameters `params`, which exist anyway.

    Defined in :numref:`sec_swin`"""
    X = X.detach().requires_grad_()
    saved = {}  # address of each memory block -> its size in bytes

    def pack(tensor):  # called for every tensor saved for the backward pass
        storage = tensor.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        attention(X).sum().backward()
    for tensor in [X, *params]:
        saved.pop(tensor.untyped_storage().data_ptr(), None)
    times = []
    for _ in range(num_repeats):
        start = time.perf_counter()
        attention(X).sum().backward()
        times.append(time.perf_counter() - start)
    return min(times), sum(saved.values())

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
    shuffle = noise.argsort(dim=1)  # the patches with the least noise first
    restore = shuffle.argsort(dim=1)
    mask = (restore >= num_keep).float()
    return shuffle[:, :num_keep], restore, mask

def take_tokens(X, indices):
    """Tokens of X (batch, no. of tokens, width) by index, per example.

    Defined in :numref:`sec_vit-mae`"""
    return torch.gather(X, 1, indices[..., None].expand(-1, -1, X.shape[-1]))

def unpatchify(patches, patch_size, num_channels=1):
    """Images (N, C, H, W) from the patch vectors of a square grid, as
    patchify cut them.

    Defined in :numref:`sec_vit-mae`"""
    n, num_patches, _ = patches.shape
    rows = int(num_patches ** 0.5)
    X = patches.reshape(n, rows, rows, num_channels, patch_size, patch_size)
    X = X.permute(0, 3, 1, 4, 2, 5)  # channel, grid row, row, grid col, col
    return X.reshape(n, num_channels, rows * patch_size, rows * patch_size)

class MaskedAutoencoder(d2l.Module):
    """A masked autoencoder: the chapter's ViT encodes the visible patches;
    a narrower Transformer decodes them with mask tokens into pixels.

    Defined in :numref:`sec_vit-mae`"""
    def __init__(self, img_size, patch_size, num_hiddens, mlp_num_hiddens,
                 num_heads, num_blks, decoder_num_hiddens,
                 decoder_mlp_num_hiddens, decoder_num_heads,
                 decoder_num_blks, mask_ratio=0.75, norm_pix_loss=True,
                 lr=1e-3, weight_decay=0.05, warmup=0.1, num_channels=1):
        super().__init__()
        self.save_hyperparameters()
        self.encoder = d2l.ViT(img_size, patch_size, num_hiddens,
                               mlp_num_hiddens, num_heads, num_blks, 0, 0,
                               num_channels=num_channels, posemb='sincos2d')
        self.init_decoder()

    def encode(self, X, noise):
        """The encoded class token and visible patches, and the masking.
    
        Defined in :numref:`sec_vit-mae`"""
        vit = self.encoder
        tokens = vit.patch_embedding(X) + vit.pos_embedding[:, 1:]
        keep, restore, mask = random_masking(noise, self.mask_ratio)
        cls_tokens = (vit.cls_token + vit.pos_embedding[:, :1]).expand(
            X.shape[0], -1, -1)
        H = torch.cat((cls_tokens, take_tokens(tokens, keep)), dim=1)
        return vit.head[0](vit.blks(H)), restore, mask

    def init_decoder(self):
        """The decoder's layers: from the encoder's width to its own, the mask
        token, its blocks and the prediction of each patch's pixels.

        Defined in :numref:`sec_vit-mae`"""
        d = self.decoder_num_hiddens
        self.decoder_embed = nn.Linear(self.num_hiddens, d)
        self.mask_token = nn.Parameter(0.02 * torch.randn(1, 1, d))
        self.register_buffer('decoder_pos_embedding', d2l.fixed_position_embedding(
            'sincos2d', self.encoder.patch_embedding.grid_size, d),
            persistent=False)
        self.decoder_blks = nn.Sequential(*[
            d2l.ViTBlock(d, self.decoder_mlp_num_hiddens, self.decoder_num_heads,
                         0) for _ in range(self.decoder_num_blks)])
        self.decoder_norm = nn.LayerNorm(d, eps=1e-6)
        self.decoder_pred = nn.Linear(d, self.patch_size**2 * self.num_channels)
        with torch.no_grad():  # Create the lazy layers' weights
            self(torch.zeros(1, self.num_channels,
                             *self.encoder.patch_embedding.img_size))
        for layer in (self.decoder_embed, self.decoder_blks, self.decoder_pred):
            d2l.init_xavier_(layer)
    

    def decode(self, H, restore):
        """Predicted pixels of every patch from the encoded visible tokens.
    
        Defined in :numref:`sec_vit-mae`"""
        H = self.decoder_embed(H)
        num_masked = restore.shape[1] - (H.shape[1] - 1)
        mask_tokens = self.mask_token.expand(H.shape[0], num_masked, -1)
        patches = take_tokens(torch.cat((H[:, 1:], mask_tokens), dim=1), restore)
        H = torch.cat((H[:, :1], patches), dim=1) + self.decoder_pos_embedding
        H = self.decoder_norm(self.decoder_blks(H))
        return self.decoder_pred(H[:, 1:])  # Without the class token
    

    def forward(self, X, noise=None):
        """The predicted pixels of every patch and the mask; `noise` (batch,
        no. of patches) chooses the mask, a new random one if None.

        Defined in :numref:`sec_vit-mae`"""
        if noise is None:  # A new random mask for every image
            num_patches = self.encoder.patch_embedding.num_patches
            noise = torch.rand(X.shape[0], num_patches, device=X.device)
        H, restore, mask = self.encode(X, noise)
        return self.decode(H, restore), mask

    def loss(self, X, noise=None):
        """The reconstruction loss of the images X.
    
        Defined in :numref:`sec_vit-mae`"""
        pred, mask = self(X, noise)
        return masked_patch_loss(pred, d2l.patchify(X, self.patch_size), mask,
                                 self.norm_pix_loss)

    def training_step(self, batch):
        """The loss of a minibatch of images; their labels go unused.
    
        Defined in :numref:`sec_vit-mae`"""
        l = self.loss(batch[0])
        self.plot('loss', l, train=True)
        return l
    

    def validation_step(self, batch):
        """Plot the loss of a minibatch of validation images.
    
        Defined in :numref:`sec_vit-mae`"""
        self.plot('loss', self.loss(batch[0]), train=False)
    

    def configure_optimizers(self):
        """AdamW with a linear warm-up and a cosine decay.
    
        Defined in :numref:`sec_vit-mae`"""
        return d2l.adamw_warmup_cosine(self)

def masked_patch_loss(pred, target, mask, norm_pix_loss=True):
    """The mean squared error of the predicted pixels of the masked patches;
    with norm_pix_loss, each target patch is normalized first.

    Defined in :numref:`sec_vit-mae`"""
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    per_patch = ((pred - target) ** 2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()

def reconstruct(pred, X, mask, patch_size, norm_pix_loss=True):
    """Images with the predicted pixels in the masked patches.

    Defined in :numref:`sec_vit-mae`"""
    target = d2l.patchify(X, patch_size)
    if norm_pix_loss:  # Undo the normalization of each patch
        mean = target.mean(dim=-1, keepdim=True)
        std = (target.var(dim=-1, keepdim=True) + 1e-6) ** 0.5
        pred = pred * std + mean
    mask = mask[..., None]
    return unpatchify(target * (1 - mask) + pred * mask, patch_size,
                      X.shape[1]).clamp(0, 1)

class FineTunedViT(d2l.TunedViT):
    """TunedViT that can train only its last linear layer (linear_probe).

    Defined in :numref:`sec_vit-mae`"""
    def __init__(self, *args, linear_probe=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.linear_probe = linear_probe

    def configure_optimizers(self):
        if self.linear_probe:  # Only the head's linear layer gets gradients
            self.requires_grad_(False)
            self.head[1].requires_grad_(True)
        return super().configure_optimizers()

def fold_normalization(model, mean=0.5, std=0.5):
    """Make a model that expects pixels (x - mean) / std take pixels x in
    [0, 1], by folding the scaling into its patch embedding (in place).

    Defined in :numref:`sec_vit-fine-tuning`"""
    conv = model.patch_embedding.conv
    with torch.no_grad():
        conv.weight /= std
        conv.bias -= (conv.weight * mean).sum(dim=(1, 2, 3))
    return model

def init_distributed():
    """Join the process group of the processes that torchrun started: NCCL
    between GPUs, one GPU per process, where this machine has a GPU for
    each of its processes, else gloo between CPU processes. Returns this
    process's rank, the number of processes and this process's device.

    Defined in :numref:`sec_vit-distributed`"""
    local_processes = int(os.environ.get('LOCAL_WORLD_SIZE', 1))
    if torch.cuda.device_count() >= local_processes:
        device = torch.device('cuda', int(os.environ['LOCAL_RANK']))
        torch.cuda.set_device(device)
        backend = 'nccl'
    else:
        device, backend = torch.device('cpu'), 'gloo'
    torch.distributed.init_process_group(backend)
    return (torch.distributed.get_rank(),
            torch.distributed.get_world_size(), device)

def distributed_dataloader(data, rank, world_size, seed=0):
    """The training minibatches of process `rank` of `world_size`, of
    `data.batch_size` examples each: a DistributedSampler deals every
    process its own share of each epoch's shuffled examples (call
    `loader.sampler.set_epoch(epoch)` before each epoch).

    Defined in :numref:`sec_vit-distributed`"""
    images, labels = (torch.from_numpy(np.asarray(a)) for a in data.train)
    dataset = torch.utils.data.TensorDataset(images, labels)
    sampler = torch.utils.data.DistributedSampler(
        dataset, world_size, rank, shuffle=True, seed=seed, drop_last=True)
    # The data module's own resizing and scaling, minibatch by minibatch
    transform = data.get_dataloader(train=True).transform

    def collate(examples):
        X, y = zip(*examples)
        return transform(torch.stack(X).numpy(), torch.stack(y).numpy())
    return torch.utils.data.DataLoader(dataset, data.batch_size,
                                       sampler=sampler, collate_fn=collate,
                                       drop_last=True)

def train_minibatch(model, optimizer, X, y, gradient_clip_val=0):
    """One step of a d2l model, or of a DDP or FSDP model wrapping one: the
    mean loss over the minibatch, its gradient, clipping, an update.
    Returns the loss.

    Defined in :numref:`sec_vit-distributed`"""
    module = getattr(model, 'module', model)  # DDP keeps the model there
    module.train()
    loss = module.loss(model(X), y)
    optimizer.zero_grad()
    loss.backward()  # DDP all-reduces the gradients here
    if gradient_clip_val > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), gradient_clip_val)
    optimizer.step()
    return loss.detach()

def torchrun(script, nproc_per_node, *args, timeout=None):
    """Run `script` in `nproc_per_node` processes on this machine, as the
    command `torchrun --standalone --nproc_per_node=N script args` does,
    with the CPU's cores shared among them; return what they printed.
    After `timeout` seconds, all of them are stopped.

    Defined in :numref:`sec_vit-distributed`"""
    threads = max(1, (os.cpu_count() or 1) // nproc_per_node)
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone',
               f'--nproc_per_node={nproc_per_node}', str(script),
               *map(str, args)]
    with subprocess.Popen(command, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=dict(
                              os.environ, OMP_NUM_THREADS=str(threads))) as p:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.terminate()  # torchrun stops its processes, then itself
            p.communicate(timeout=60)
            raise
    if p.returncode != 0:
        raise RuntimeError(f'{" ".join(command[2:])} failed:\n' + err[-3000:])
    return out

def local_bytes(tensors):
    """The bytes of `tensors` that this process holds: its own share of a
    sharded DTensor, all of any other tensor.

    Defined in :numref:`sec_vit-distributed`"""
    total = 0
    for t in tensors:
        t = t.to_local() if hasattr(t, 'to_local') else t
        total += t.numel() * t.element_size()
    return total