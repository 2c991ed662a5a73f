"""Build the chapter's Flax ViT from the ViT paper's released ``.npz`` checkpoints.

The paper's code (``vit_jax``) and its successor ``big_vision`` save a model's
parameters as a NumPy ``.npz`` file of Flax's parameter tree, flattened with
``/``: ``embedding/kernel`` is the patch embedding's (p, p, C, D) convolution
kernel, ``Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel``
the (D, H, D/H) query projection of block 0, and so on. This module reads such
a file with NumPy alone (no PyTorch, no TensorFlow) and maps every array onto
the chapter's ``ViT``:

=========================================================  ==========================
checkpoint (vit_jax names; big_vision in brackets)         chapter's Flax ViT
=========================================================  ==========================
``embedding/kernel``, ``/bias``                            ``patch_embedding/conv``
``cls``                                                    ``cls_token``
``Transformer/posembed_input/pos_embedding``               ``pos_embedding``
[``pos_embedding``: patches only, none for ``cls``]
``Transformer/encoderblock_{i}/LayerNorm_0``               ``blks_{i}/ln1``
``.../MultiHeadDotProductAttention_1`` [``_0``]:           ``blks_{i}/attention``:
``query``, ``key``, ``value`` (D, H, D/H), bias (H, D/H)   ``qkv`` (D, 3D), bias (3D,)
``out`` (H, D/H, D)                                        ``proj`` (D, D)
``.../LayerNorm_2`` [``LayerNorm_1``]                      ``blks_{i}/ln2``
``.../MlpBlock_3/Dense_0``, ``Dense_1`` [``MlpBlock_0``]   ``blks_{i}/mlp/dense1``, ``dense2``
``Transformer/encoder_norm``                               ``head/layers_0``
``head``                                                   ``head/layers_1``
=========================================================  ==========================

big_vision may also keep the blocks stacked (``Transformer/encoderblock/...``
with the block as the leading axis), and prefix everything with ``params/``;
old vit_jax files keep the model under ``opt/target/``. All of these are read.

The chapter's ViT has one layout of each part, so a checkpoint with anything
else (a representation layer ``pre_logits``, a MAP head, global average
pooling, a missing key, a shape that does not fit) raises a ValueError that
names the key and what to do, instead of building a model that computes
something else.
"""
import re

import numpy as np

# The prefixes under which the known files keep the model's parameters.
PREFIXES = ('', 'params/', 'opt/target/')
# Block part names: the paper's code numbers the layers of a block in order of
# creation (LayerNorm_0, MultiHeadDotProductAttention_1, LayerNorm_2,
# MlpBlock_3); big_vision numbers each kind on its own.
NAMINGS = {
    'vit_jax': {'ln1': 'LayerNorm_0', 'attention': 'MultiHeadDotProductAttention_1',
                'ln2': 'LayerNorm_2', 'mlp': 'MlpBlock_3'},
    'big_vision': {'ln1': 'LayerNorm_0', 'attention': 'MultiHeadDotProductAttention_0',
                   'ln2': 'LayerNorm_1', 'mlp': 'MlpBlock_0'},
}
LAYER_NORM_EPS = 1e-6  # both codes' default, and the chapter's


def _fail(key, why, fix):
    raise ValueError(f'cannot load {key!r} into the chapter\'s ViT: {why}. {fix}')


class _Checkpoint:
    """The arrays of an .npz file under one prefix; remembers which were read."""

    def __init__(self, arrays, source):
        self.source = source
        starts = [p for p in PREFIXES if f'{p}embedding/kernel' in arrays]
        if not starts:
            raise ValueError(f'{source} is not a ViT checkpoint of the paper\'s code or '
                             'big_vision: it has no embedding/kernel (under any of the '
                             f'prefixes {PREFIXES}). Pass the .npz of a ViT.')
        self.prefix = starts[0]
        self.arrays = {k[len(self.prefix):]: v for k, v in arrays.items()
                       if k.startswith(self.prefix)}
        self.used = set()

    def __contains__(self, key):
        return key in self.arrays

    def get(self, key, shape=None):
        if key not in self.arrays:
            _fail(self.prefix + key, f'{self.source} has no such array',
                  'Pass a checkpoint of a plain ViT of the paper\'s code or big_vision, '
                  'with all of its parameters.')
        value = np.asarray(self.arrays[key], dtype=np.float32)
        if shape is not None and value.shape != tuple(shape):
            _fail(self.prefix + key, f'its shape is {value.shape}, and the ViT that the '
                  f'other arrays describe needs {tuple(shape)}',
                  'The file is damaged or mixes models: download it again.')
        self.used.add(key)
        return value

    def unused(self):
        return sorted(self.prefix + k for k in set(self.arrays) - self.used)


def _block_keys(ckpt):
    """The block prefixes ('Transformer/encoderblock_0/', ...) and, for
    stacked blocks, the index of each block on the leading axis."""
    numbered = sorted({int(m.group(1)) for k in ckpt.arrays
                       if (m := re.match(r'Transformer/encoderblock_(\d+)/', k))})
    if numbered:
        if numbered != list(range(len(numbered))):
            _fail(f'Transformer/encoderblock_{numbered[-1]}', f'the blocks are numbered '
                  f'{numbered}, not 0, 1, ...', 'The file is damaged: download it again.')
        return [(f'Transformer/encoderblock_{i}/', None) for i in numbered]
    if 'Transformer/encoderblock/LayerNorm_0/scale' in ckpt:  # big_vision's scan
        depth = ckpt.arrays['Transformer/encoderblock/LayerNorm_0/scale'].shape[0]
        return [('Transformer/encoderblock/', i) for i in range(depth)]
    _fail('Transformer/encoderblock_0', f'{ckpt.source} has no encoder blocks',
          'Pass the .npz of a ViT.')


def _naming(ckpt, block):
    for name, parts in NAMINGS.items():
        if f'{block}{parts["attention"]}/query/kernel' in ckpt:
            return parts
    _fail(f'{block}MultiHeadDotProductAttention_1', 'the block has no self-attention under '
          'the names of the paper\'s code (MultiHeadDotProductAttention_1) or big_vision\'s '
          '(MultiHeadDotProductAttention_0)', 'Pass a checkpoint of a plain ViT.')


def _refuse_options(ckpt):
    """The options of the two codes that the chapter's ViT lacks."""
    options = [('pre_logits/kernel', 'a representation layer (pre_logits) between the '
                'encoder and the head', 'Use a checkpoint without it, such as the AugReg '
                'ones.'),
               ('MAPHead_0/probe', 'attention pooling (a MAP head)', "Use a checkpoint "
                "with a class token (big_vision's pool_type='tok').")]
    for key, option, fix in options:
        if key in ckpt:
            _fail(ckpt.prefix + key, f'it belongs to {option}, which the chapter\'s ViT '
                  'does not have', fix)
    if 'cls' not in ckpt:
        _fail(ckpt.prefix + 'cls', 'the checkpoint has no class token, so it pools the '
              "encoder's outputs otherwise (big_vision's 'gap' normalizes each token, then "
              "averages; the chapter's pool='mean' averages, then normalizes)",
              "Use a checkpoint with a class token (pool_type='tok').")


def _layer(ckpt, key, shape_in, shape_out, idx):
    kernel, bias = ckpt.get(key + '/kernel'), ckpt.get(key + '/bias')
    if idx is not None:  # stacked blocks: this block's slice
        kernel, bias = kernel[idx], bias[idx]
    if kernel.shape != shape_in + shape_out or bias.shape != shape_out:
        _fail(ckpt.prefix + key, f'its kernel and bias have shapes {kernel.shape} and '
              f'{bias.shape}, not {shape_in + shape_out} and {shape_out}',
              'The file is damaged or mixes models: download it again.')
    return kernel, bias


def _norm(ckpt, key, width, idx=None):
    scale, bias = ckpt.get(key + '/scale'), ckpt.get(key + '/bias')
    if idx is not None:
        scale, bias = scale[idx], bias[idx]
    if scale.shape != (width,) or bias.shape != (width,):
        _fail(ckpt.prefix + key, f'its scale and bias have shapes {scale.shape} and '
              f'{bias.shape}, not ({width},)', 'The file is damaged: download it again.')
    return {'scale': scale, 'bias': bias}


def _block(ckpt, block, idx, width):
    names = _naming(ckpt, block)
    attention = f'{block}{names["attention"]}/'
    query = ckpt.arrays[attention + 'query/kernel']
    num_heads = query.shape[-2]
    if width % num_heads or query.shape[-1] != width // num_heads:
        _fail(ckpt.prefix + attention + 'query/kernel', f'its shape {query.shape} does '
              f'not split the width {width} into heads', 'Pass a checkpoint of a plain ViT.')
    head = (num_heads, width // num_heads)
    q, k, v = (_layer(ckpt, attention + n, (width,), head, idx)
               for n in ('query', 'key', 'value'))
    # Our qkv's outputs are queries, keys, values, each head after head
    qkv = {'kernel': np.concatenate([w.reshape(width, width) for w, _ in (q, k, v)], 1),
           'bias': np.concatenate([b.reshape(width) for _, b in (q, k, v)])}
    out_kernel, out_bias = _layer(ckpt, attention + 'out', head, (width,), idx)
    mlp = f'{block}{names["mlp"]}/'
    dense0 = ckpt.arrays.get(mlp + 'Dense_0/kernel')
    if dense0 is None:
        ckpt.get(mlp + 'Dense_0/kernel')  # raises, naming the key
    mlp_width = dense0.shape[-1]
    w1, b1 = _layer(ckpt, mlp + 'Dense_0', (width,), (mlp_width,), idx)
    w2, b2 = _layer(ckpt, mlp + 'Dense_1', (mlp_width,), (width,), idx)
    params = {'ln1': _norm(ckpt, block + names['ln1'], width, idx),
              'attention': {'qkv': qkv, 'proj': {'kernel': out_kernel.reshape(width, width),
                                                 'bias': out_bias}},
              'ln2': _norm(ckpt, block + names['ln2'], width, idx),
              'mlp': {'dense1': {'kernel': w1, 'bias': b1},
                      'dense2': {'kernel': w2, 'bias': b2}}}
    return params, num_heads, mlp_width


def params_from_npz(arrays, source='the checkpoint'):
    """The chapter's ViT hyperparameters and Flax parameters (NumPy arrays) for
    the checkpoint ``arrays`` (a mapping of the file's names to arrays).
    Raises a ValueError naming the key for anything that does not map."""
    ckpt = _Checkpoint(arrays, source)
    _refuse_options(ckpt)
    kernel = ckpt.get('embedding/kernel')
    if kernel.ndim != 4 or kernel.shape[0] != kernel.shape[1]:
        _fail(ckpt.prefix + 'embedding/kernel', f'its shape {kernel.shape} is not '
              '(p, p, channels, width) of square patches', "Pass a checkpoint of a "
              "ViT with the paper's patch embedding (not a hybrid).")
    patch_size, _, num_channels, width = kernel.shape
    cls = ckpt.get('cls', (1, 1, width))
    if 'Transformer/posembed_input/pos_embedding' in ckpt:  # includes the class token
        pos = ckpt.get('Transformer/posembed_input/pos_embedding')
        num_patches = pos.shape[1] - 1
    elif 'pos_embedding' in ckpt:  # big_vision: the patches' only
        pos = ckpt.get('pos_embedding')
        pos = np.concatenate([np.zeros((1, 1, width), np.float32), pos], axis=1)
        num_patches = pos.shape[1] - 1
    else:
        ckpt.get('Transformer/posembed_input/pos_embedding')  # raises, naming it
    grid = int(round(num_patches ** 0.5))
    if pos.shape != (1, num_patches + 1, width) or grid * grid != num_patches:
        _fail(ckpt.prefix + 'Transformer/posembed_input/pos_embedding', f'its shape '
              f'{pos.shape} is not (1, 1 + a square number of patches, {width})',
              'Pass a checkpoint of a ViT with learned position embeddings on a square grid.')
    head_kernel = ckpt.get('head/kernel')
    if head_kernel.ndim != 2 or head_kernel.shape[0] != width:
        _fail(ckpt.prefix + 'head/kernel', f'its shape {head_kernel.shape} is not '
              f'({width}, classes)', 'The file is damaged: download it again.')
    num_classes = head_kernel.shape[1]
    head_bias = ckpt.get('head/bias', (num_classes,))
    params = {'patch_embedding': {'conv': {
                  'kernel': kernel, 'bias': ckpt.get('embedding/bias', (width,))}},
              'cls_token': cls, 'pos_embedding': pos,
              'head': {'layers_0': _norm(ckpt, 'Transformer/encoder_norm', width),
                       'layers_1': {'kernel': head_kernel, 'bias': head_bias}}}
    blocks = [_block(ckpt, block, idx, width) for block, idx in _block_keys(ckpt)]
    if len({(h, m) for _, h, m in blocks}) != 1:
        _fail('Transformer/encoderblock_*', 'the blocks differ in their numbers of heads '
              "or MLP widths; the chapter's blocks are all alike", 'Pass a plain ViT.')
    for i, (block_params, _, _) in enumerate(blocks):
        params[f'blks_{i}'] = block_params
    if ckpt.unused():
        _fail(ckpt.unused()[0], f'the chapter\'s ViT has no place for it (nor for '
              f'{len(ckpt.unused()) - 1} other arrays: {ckpt.unused()[:5]})',
              'It belongs to an option the chapter\'s ViT does not have: use a plain ViT.')
    hparams = dict(img_size=grid * patch_size, patch_size=patch_size, num_hiddens=width,
                   mlp_num_hiddens=blocks[0][2], num_heads=blocks[0][1],
                   num_blks=len(blocks), use_bias=True, num_classes=num_classes,
                   num_channels=num_channels, pool='cls', posemb='learn')
    return hparams, params


def vit_from_npz(path, emb_dropout=0.0, blk_dropout=0.0, lr=0.1):
    """The chapter's Flax ``ViT`` and its parameters from a released ``.npz``
    checkpoint of the ViT paper's code or of big_vision (a file path, or an
    open file), read with NumPy alone.

    The model computes what the checkpoint's model computes, at the image
    size it was trained at; ``ViT.with_img_size`` moves it to another.
    Anything that does not map onto the chapter's ViT raises a ValueError
    that names the key and the fix."""
    from jax import numpy as jnp

    from d2l_extras.jax import ViT  # defined below the WARNING marker there

    with np.load(path, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    hparams, params = params_from_npz(arrays, str(path))
    model = ViT(emb_dropout=emb_dropout, blk_dropout=blk_dropout, lr=lr, **hparams)
    return model, _tree_map(jnp.asarray, params)


def _tree_map(fn, tree):
    return {k: _tree_map(fn, v) if isinstance(v, dict) else fn(v) for k, v in tree.items()}
