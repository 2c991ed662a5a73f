"""Copy the weights of the chapter's PyTorch ViT into its Flax twin, and back.

The two tabs build the same network under the same attribute names, so the
copy is a renaming plus two layout changes: a linear layer's (out, in) weight
becomes Flax's (in, out) kernel, and a convolution's (out, in, h, w) weight
becomes Flax's (h, w, in, out) kernel. The images change layout too, NCHW to
NHWC, which is the caller's business. ViTAttention's qkv layer needs nothing
special: both tabs split its 3 * num_hiddens outputs the same way (queries,
keys, values, then heads), so its weight transposes like any linear layer's.
DeiT's student (DistillationViT) needs no rule of its own either: its
distillation token is a top-level parameter like the class token, and its
second head ``head_dist`` a linear layer of the same name in both tabs.
"""
from collections.abc import Mapping

import numpy as np

# A PyTorch nn.Sequential numbers its children; Flax names list entries
# 'blks_0' and nn.Sequential layers 'layers_0'. The masked autoencoder's
# decoder keeps its blocks in a list too.
_SEQUENCE_NAMES = {'blks': 'blks_{}', 'decoder_blks': 'decoder_blks_{}', 'head': 'layers_{}'}


def _flax_path(torch_path):
    parts, path = torch_path.split('.'), []
    for i, part in enumerate(parts):
        if part.isdigit():
            parent = parts[i - 1]
            if parent not in _SEQUENCE_NAMES:
                raise ValueError(f'do not know how Flax names entry {part} of {parent!r}')
            if parent.endswith('blks'):  # a list attribute: Flax flattens it into the name
                path[-1] = _SEQUENCE_NAMES[parent].format(part)
            else:
                path.append(_SEQUENCE_NAMES[parent].format(part))
        else:
            path.append(part)
    return path


# How a PyTorch weight becomes a Flax one: the Flax name of the leaf and the
# axes to transpose, (out, in) -> (in, out) and (out, in, h, w) -> (h, w, in, out).
_WEIGHT_LAYOUTS = {'Linear': ('kernel', (1, 0)), 'Conv2d': ('kernel', (2, 3, 1, 0)),
                   'LayerNorm': ('scale', None)}


def _correspondence(torch_model):
    """Yield (PyTorch state-dict name, Flax path, axes) for every tensor."""
    modules = dict(torch_model.named_modules())
    for name in torch_model.state_dict():
        module_name, _, leaf = name.rpartition('.')
        axes = None
        if leaf == 'weight':
            kind = type(modules.get(module_name, torch_model)).__name__
            if kind not in _WEIGHT_LAYOUTS:
                raise ValueError(f'no Flax counterpart known for {name} ({kind})')
            leaf, axes = _WEIGHT_LAYOUTS[kind]
        yield name, tuple(_flax_path(module_name) if module_name else ()) + (leaf,), axes


def _leaf_paths(tree, prefix=()):
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from _leaf_paths(value, prefix + (key,))
        else:
            yield prefix + (key,)


def params_from_torch(torch_model):
    """Return the variables ``{'params': ...}`` for the Flax version of
    ``torch_model`` (the chapter's ViT or any of its parts), as NumPy arrays.

    ``flax_model.apply(params_from_torch(torch_model), X_nhwc)`` then computes
    what ``torch_model.eval()(X_nchw)`` does.
    """
    state = torch_model.state_dict()
    params = {}
    for name, path, axes in _correspondence(torch_model):
        value = state[name].detach().cpu().numpy()
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = np.ascontiguousarray(value if axes is None else value.transpose(axes))
    return {'params': params}


def params_to_torch(variables, torch_model):
    """The inverse of params_from_torch: copy the Flax ``variables`` into
    ``torch_model``, which must be built with the same configuration, and
    return it. Missing, extra or misshapen parameters raise a ValueError."""
    import torch

    params, state, used = variables['params'], {}, set()
    for name, path, axes in _correspondence(torch_model):
        node = params
        for key in path:
            if key not in node:
                raise ValueError(f'the Flax variables have no {"/".join(path)} for {name}: '
                                 'build both models with the same configuration')
            node = node[key]
        used.add(path)
        value = np.asarray(node)
        if axes is not None:
            value = value.transpose(np.argsort(axes))
        state[name] = torch.from_numpy(value.copy())  # a writable, contiguous copy
    leaves = set(_leaf_paths(params))
    if leaves - used:
        raise ValueError(f'the PyTorch model has no place for {sorted(leaves - used)}: '
                         'build both models with the same configuration')
    try:
        torch_model.load_state_dict(state)
    except RuntimeError as e:  # shapes differ
        raise ValueError(f'{e}\nBuild both models with the same configuration.') from e
    return torch_model
