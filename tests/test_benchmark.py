"""benchmarks/train_step.py times the network it says: with `--dropout 0`,
every implementation computes in training mode what it computes in
evaluation, and with the default rate it does not. (The models start with
zero heads, so their parameters get noise first: else all logits are 0.)"""
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / 'benchmarks'))
import train_step  # noqa: E402

# A small network in the benchmark's format: how the rate reaches the dropout
# layers does not depend on the sizes
CONFIG = (32, 8, 3, 64, 128, 2, 2)  # img, patch, channels, width, MLP, heads, blocks
PYTORCH = [name for name in train_step.IMPLEMENTATIONS if name != 'ours (JAX)']


@pytest.mark.parametrize('implementation', PYTORCH)
@pytest.mark.parametrize('dropout', [0.0, train_step.DROPOUT])
def test_pytorch_models_drop_out_only_when_asked(implementation, dropout):
    import torch
    torch.manual_seed(0)
    model = train_step.torch_model(implementation, CONFIG, dropout)
    X = torch.rand(2, CONFIG[2], CONFIG[0], CONFIG[0])
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
        training = model.train()(X)
        evaluation = model.eval()(X)
    assert torch.allclose(training, evaluation, atol=1e-5) == (dropout == 0)


@pytest.mark.parametrize('dropout', [0.0, train_step.DROPOUT])
def test_jax_model_drops_out_only_when_asked(dropout):
    import jax
    import numpy as np
    model = train_step.jax_model(CONFIG, dropout)
    X = jax.random.uniform(jax.random.key(1), (2, CONFIG[0], CONFIG[0], CONFIG[2]))
    variables = jax.jit(model.init)(jax.random.key(0), X)  # jitted: op by op compiles slower
    leaves, treedef = jax.tree.flatten(variables)
    keys = jax.random.split(jax.random.key(3), len(leaves))
    variables = jax.tree.unflatten(treedef, [
        leaf + 0.02 * jax.random.normal(key, leaf.shape) for leaf, key in zip(leaves, keys)])
    apply = jax.jit(model.apply, static_argnames='training')
    training = apply(variables, X, training=True, rngs={'dropout': jax.random.key(2)})
    evaluation = apply(variables, X, training=False)
    assert np.allclose(training, evaluation, atol=1e-5) == (dropout == 0)
