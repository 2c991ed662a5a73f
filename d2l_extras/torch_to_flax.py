"""Copy the weights of the chapter's PyTorch ViT into its Flax twin.

The two tabs build the same network under the same attribute names, so the
copy is a renaming plus two layout changes: a linear layer's (out, in) weight
becomes Flax's (in, out) kernel, and a convolution's (out, in, h, w) weight
becomes Flax's (h, w, in, out) kernel. The images change layout too, NCHW to
NHWC, which is the caller's business.
"""
import numpy as np

# A PyTorch nn.Sequential numbers its children; Flax names list entries
# 'blks_0' and nn.Sequential layers 'layers_0'.
_SEQUENCE_NAMES = {'blks': 'blks_{}', 'head': 'layers_{}'}


def _flax_path(torch_path):
    parts, path = torch_path.split('.'), []
    for i, part in enumerate(parts):
        if part.isdigit():
            parent = parts[i - 1]
            if parent not in _SEQUENCE_NAMES:
                raise ValueError(f'do not know how Flax names entry {part} of {parent!r}')
            if parent == 'blks':  # a list attribute: Flax flattens it into the name
                path[-1] = _SEQUENCE_NAMES[parent].format(part)
            else:
                path.append(_SEQUENCE_NAMES[parent].format(part))
        else:
            path.append(part)
    return path


def params_from_torch(torch_model):
    """Return the variables ``{'params': ...}`` for the Flax version of
    ``torch_model`` (the chapter's ViT or any of its parts), as NumPy arrays.

    ``flax_model.apply(params_from_torch(torch_model), X_nhwc)`` then computes
    what ``torch_model.eval()(X_nchw)`` does.
    """
    from torch import nn  # only the PyTorch side needs torch

    modules = dict(torch_model.named_modules())
    params = {}
    for name, tensor in torch_model.state_dict().items():
        module_name, _, leaf = name.rpartition('.')
        module = modules.get(module_name, torch_model)
        value = tensor.detach().cpu().numpy()
        if leaf == 'weight':
            if isinstance(module, nn.Linear):
                leaf, value = 'kernel', value.T
            elif isinstance(module, nn.Conv2d):
                leaf, value = 'kernel', value.transpose(2, 3, 1, 0)
            elif isinstance(module, nn.LayerNorm):
                leaf = 'scale'
            else:
                raise ValueError(f'no Flax counterpart known for {name} '
                                 f'({type(module).__name__})')
        node = params
        for key in _flax_path(module_name) if module_name else []:
            node = node.setdefault(key, {})
        node[leaf] = np.ascontiguousarray(value)
    return {'params': params}
