"""Helpers shared by the test files: both libraries under the tabs' names,
training in either tab, and random parameters that leave no mistake hidden
behind a zero or a one."""
import jax
import torch

from d2l_extras import jax as jax_lib
from d2l_extras import torch as torch_lib

# `%%tab all` code is saved into both libraries; parametrize with ids=TAB_IDS
LIBS = [torch_lib, jax_lib]
TAB_IDS = ['pytorch', 'jax']


def fit(lib, model, data, max_epochs=1, **trainer_args):
    """Train ``model`` with the tab's d2l Trainer from seed 0 (JAX takes the
    key, PyTorch the global seed); return the trainer."""
    trainer = lib.Trainer(max_epochs=max_epochs, **trainer_args)
    if lib is jax_lib:
        trainer.fit(model, data, key=jax.random.key(0))
    else:
        torch.manual_seed(0)
        trainer.fit(model, data)
    return trainer


def randomize(torch_model, seed=0, scale=0.1):
    """Perturb every constant-initialized parameter (zero heads, class token
    and biases, unit LayerNorm scales) so that none of them hides a mismatch;
    the random weights keep their initialization, so the outputs have the size
    of a real model's. Returns the model in evaluation mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in torch_model.parameters():
            if p.numel() == 1 or p.std() == 0:
                p.add_(scale * torch.randn(p.shape, generator=generator))
    return torch_model.eval()


def random_state(torch_model, seed=0):
    """Every floating-point entry of the state (weights and batch statistics)
    drawn at random, variances positive: for a CNN, whose batch norm starts
    at the identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in torch_model.state_dict().items():
            if tensor.is_floating_point():
                values = torch.rand(tensor.shape, generator=generator)
                tensor.copy_(0.5 + values if 'var' in name else values - 0.5)
    return torch_model
