"""The chapter's PyTorch library: what it adds to ``from d2l import torch as d2l``.

The part above the WARNING marker is written by hand; the part below is the
chapter's ``#@save`` code, written by ``d2lbook build lib``.
"""
import math
import sys
import time

import numpy as np
import torch
from d2l import torch as d2l
from torch import nn
from torch.nn import functional as F

from d2l_extras import quick_mode
from d2l_extras.fashion_mnist_data import FashionMNISTBatches
from d2l_extras.image_checks import check_image_batch, check_position_grid, patch_grid
from d2l_extras.timm_import import vit_from_timm

# The notebooks call this module `extras`; saved code that says `extras.ViT`
# runs here unchanged.
extras = sys.modules[__name__]


def run_size(max_epochs, verbose=True, quick_max_epochs=quick_mode.QUICK_MAX_EPOCHS):
    """Epochs and examples for a training cell: quick mode on a machine
    without a GPU unless D2L_VIT_QUICK says otherwise (see quick_mode)."""
    return quick_mode.run_size(max_epochs, torch.cuda.is_available(), verbose,
                               quick_max_epochs)


class FashionMNIST(FashionMNISTBatches, d2l.DataModule):
    """Fashion-MNIST as NCHW float tensors in [0, 1].

    d2l's own class downloads through torchvision with no offline fallback;
    this one keeps its interface and adds the stand-in, example caps and an
    optional ``augment(images, rng)`` for the training images."""
    def __init__(self, batch_size=64, resize=(28, 28), root=None,
                 num_train=None, num_val=None, augment=None):
        super().__init__()
        self.save_hyperparameters()
        self.load(root, num_train, num_val)

    def convert(self, array):
        return torch.from_numpy(array)

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
        self.img_size, self.patch_size, self.grid_size = patch_grid(
            img_size, patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.num_channels = num_channels
        self.conv = nn.Conv2d(num_channels, num_hiddens,
                              kernel_size=patch_size, stride=patch_size)

    def forward(self, X):
        check_image_batch(X.shape, self.num_channels, self.img_size,
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
        # The fused kernel has no dropout on a CPU; its fallback is slower
        # than these three lines (benchmarks/train_step.py)
        if return_weights or (self.training and self.attention_dropout.p > 0
                              and X.device.type == 'cpu'):
            # softmax(Q K^T / sqrt(head width)) V, step by step
            scores = Q @ K.transpose(2, 3) / Q.shape[-1]**0.5
            weights = F.softmax(scores, dim=-1)
            H = self.attention_dropout(weights) @ V
        else:  # The same in one fused kernel, which keeps no weights
            weights = None
            dropout_p = self.attention_dropout.p if self.training else 0
            H = F.scaled_dot_product_attention(Q, K, V, dropout_p=dropout_p)
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
                 use_bias=False, num_classes=10, num_channels=1, pool='cls'):
        super().__init__()
        self.save_hyperparameters()
        if pool not in ('cls', 'mean'):
            raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")
        self.patch_embedding = PatchEmbedding(img_size, patch_size,
                                              num_hiddens, num_channels)
        num_steps = self.patch_embedding.num_patches
        if pool == 'cls':
            self.cls_token = nn.Parameter(torch.zeros(1, 1, num_hiddens))
            num_steps += 1
        self.pos_embedding = nn.Parameter(
            0.02 * torch.randn(1, num_steps, num_hiddens))
        self.dropout = nn.Dropout(emb_dropout)
        self.blks = nn.Sequential(*[
            ViTBlock(num_hiddens, mlp_num_hiddens, num_heads, blk_dropout,
                     use_bias) for _ in range(num_blks)])
        self.head = nn.Sequential(nn.LayerNorm(num_hiddens, eps=1e-6),
                                  nn.Linear(num_hiddens, num_classes))
        self.initialize_weights()

    def initialize_weights(self):
        with torch.no_grad():  # Create the lazy layers' weights
            self(torch.zeros(1, self.num_channels,
                             *self.patch_embedding.img_size))
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                # Xavier on the (out, in) matrix, also for the patch conv, and
                # on each of the three (d, d) matrices that qkv stacks
                matrix = module.weight.view(module.weight.shape[0], -1)
                for W in matrix.chunk(3 if name.endswith('qkv') else 1):
                    nn.init.xavier_uniform_(W)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
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
        state['pos_embedding'] = resize_position_embedding(
            state['pos_embedding'], self.patch_embedding.grid_size,
            model.patch_embedding.grid_size, int(self.pool == 'cls'), mode)
        model.load_state_dict(state)
        return model.to(self.pos_embedding.device)

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
    check_position_grid(pos_embedding.shape[1], num_prefix_tokens, old_grid)
    prefix = pos_embedding[:, :num_prefix_tokens]
    # (1, h * w, d) -> (1, d, h, w): an image with d channels
    grid = pos_embedding[:, num_prefix_tokens:].reshape(
        1, old_grid[0], old_grid[1], -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=tuple(new_grid), mode=mode,
                         antialias=True, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], -1)
    return torch.cat((prefix, grid), dim=1)

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

def warmup_cosine(step, warmup_steps, total_steps):
    """Learning-rate factor: linear warm-up from 0, then cosine decay to 0.

    Defined in :numref:`sec_vit-exercise-accuracy`"""
    if step < warmup_steps:
        return step / warmup_steps
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1)
    return 0.5 * (1 + math.cos(math.pi * progress))

class TunedViT(extras.ViT):
    """The chapter's ViT with AdamW and a schedule, and label smoothing.

    Defined in :numref:`sec_vit-exercise-accuracy`"""
    def __init__(self, *args, adamw=False, weight_decay=0.05, warmup=0.1,
                 label_smoothing=0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.adamw, self.weight_decay = adamw, weight_decay
        self.warmup, self.label_smoothing = warmup, label_smoothing

    def loss(self, Y_hat, Y, averaged=True):
        return F.cross_entropy(Y_hat.reshape(-1, Y_hat.shape[-1]), Y.reshape(-1),
                               reduction='mean' if averaged else 'none',
                               label_smoothing=self.label_smoothing)

    def configure_optimizers(self):
        if not self.adamw:
            return super().configure_optimizers()
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr,
                                      weight_decay=self.weight_decay)
        total_steps = self.trainer.max_epochs * self.trainer.num_train_batches
        warmup_steps = round(self.warmup * total_steps)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, warmup_steps, total_steps))
        # d2l's Trainer only calls optimizer.step(): advance the schedule there
        optimizer.register_step_post_hook(lambda *args: schedule.step())
        return optimizer

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