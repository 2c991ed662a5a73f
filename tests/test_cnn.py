"""The CNN that the chapter compares the ViT with: ResNet-18, in both tabs.

Claims: the two tabs build the same network (same parameter count, same
logits and the same batch-norm updates for the same weights, with either
stem), it starts at the loss log 10, and its widths can match the ViT's size.
"""
import math

import jax
import numpy as np
import pytest
import torch

from d2l_extras import jax as jax_lib
from d2l_extras import torch as torch_lib

from helpers import random_state

SMALL_ARCH = ((1, 8), (2, 16))


def flax_variables(torch_model):
    """The PyTorch ResNet18's weights and batch statistics, as Flax variables."""
    variables = {'params': {}, 'batch_stats': {}}

    def put(collection, path, leaf, value):
        node = variables[collection]
        for name in path:
            node = node.setdefault(name, {})
        node[leaf] = value

    modules = dict(torch_model.named_modules())
    for name, tensor in torch_model.state_dict().items():
        module_name, _, leaf = name.rpartition('.')
        module = modules[module_name]
        parts = module_name.split('.')
        if parts[0] == 'stem':
            path = ['stem_conv' if isinstance(module, torch.nn.Conv2d) else 'stem_bn']
        elif parts[0] == 'stages':
            path = [f'stages_{parts[1]}_{parts[2]}', parts[3]]
        else:
            path = ['head']
        value = tensor.detach().numpy().copy()  # not a view that PyTorch updates
        if isinstance(module, torch.nn.BatchNorm2d):
            if leaf in ('running_mean', 'running_var'):
                put('batch_stats', path, leaf.removeprefix('running_')[:4], value)
            elif leaf != 'num_batches_tracked':
                put('params', path, 'scale' if leaf == 'weight' else 'bias', value)
        elif leaf == 'weight':
            axes = (2, 3, 1, 0) if value.ndim == 4 else (1, 0)
            put('params', path, 'kernel', value.transpose(axes))
        else:
            put('params', path, 'bias', value)
    return variables


@pytest.mark.parametrize('small_images', [False, True])
def test_pytorch_and_jax_resnets_give_the_same_logits_for_the_same_weights(small_images):
    torch.manual_seed(0)
    torch_model = random_state(torch_lib.ResNet18(SMALL_ARCH, num_channels=3,
                                                small_images=small_images))
    jax_model = jax_lib.ResNet18(SMALL_ARCH, num_channels=3, small_images=small_images)
    variables = flax_variables(torch_model)
    X = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    torch_model.eval()
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(X)).numpy()
    logits = jax_model.apply(variables, X.transpose(0, 2, 3, 1))
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    # The structures match exactly: nothing is missing or left over
    shapes = jax.eval_shape(jax_model.init, jax.random.key(0), X.transpose(0, 2, 3, 1))
    assert jax.tree.structure(shapes) == jax.tree.structure(variables)


def test_batch_norm_trains_the_same_way_in_both_tabs():
    """In training, batch statistics normalize and update the running ones
    (PyTorch keeps the unbiased variance, Flax the biased one)."""
    torch_model = random_state(torch_lib.ResNet18(SMALL_ARCH, small_images=True))
    variables = flax_variables(torch_model)
    X = np.random.default_rng(1).standard_normal((8, 1, 16, 16)).astype(np.float32)
    torch_model.train()
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(X)).numpy()
    logits, updates = jax_lib.ResNet18(SMALL_ARCH, small_images=True).apply(
        variables, X.transpose(0, 2, 3, 1), training=True, mutable=['batch_stats'])
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    torch_mean = torch_model.stem[1].running_mean.numpy()
    np.testing.assert_allclose(updates['batch_stats']['stem_bn']['mean'], torch_mean,
                               rtol=1e-5, atol=1e-6)


def test_both_tabs_count_the_same_parameters_and_start_at_log_10():
    torch.manual_seed(0)
    torch_model = torch_lib.ResNet18(num_channels=1)
    jax_model = jax_lib.ResNet18(num_channels=1)
    X = np.random.default_rng(0).random((8, 1, 96, 96), dtype=np.float32)
    shapes = jax.eval_shape(jax_model.init, jax.random.key(0), X.transpose(0, 2, 3, 1))
    jax_count = sum(x.size for x in jax.tree.leaves(shapes['params']))
    assert sum(p.numel() for p in torch_model.parameters()) == jax_count == 11_178_378
    y = torch.arange(8) % 10
    assert torch_model.loss(torch_model(torch.from_numpy(X)), y).item() == pytest.approx(math.log(10))
