"""benchmarks/step_parts.py times the same parts in both frameworks: each part
computes the same numbers in PyTorch and in JAX, and the dense products are
the ones their names say (checked against NumPy)."""
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / 'benchmarks'))
import step_parts  # noqa: E402

SHAPES = (2, 5, 8, 16)  # minibatch, tokens, width, MLP width: small, same layouts


@pytest.fixture(scope='module')
def results():
    inputs = step_parts.part_inputs(SHAPES)
    torch_parts, jax_parts = step_parts.torch_parts(inputs), step_parts.jax_parts(inputs)
    return inputs, {name: (step_parts.torch_numbers(torch_parts[name]()),
                           step_parts.jax_numbers(jax_parts[name]()))
                    for name in step_parts.PARTS}


@pytest.mark.parametrize('part', step_parts.PARTS)
def test_both_frameworks_compute_the_same_part(results, part):
    _, numbers = results
    torch_results, jax_results = numbers[part]
    assert len(torch_results) == len(jax_results)
    for torch_result, jax_result in zip(torch_results, jax_results):
        assert torch_result.shape == jax_result.shape
        np.testing.assert_allclose(torch_result, jax_result, rtol=1e-4, atol=1e-4)


def test_the_dense_parts_are_the_products_they_name(results):
    inputs, numbers = results
    X, W, dY = (inputs[k].astype(np.float64) for k in ('X', 'W', 'dY'))
    expected = {'dense forward': X @ W,
                'dense input gradient': dY @ W.T,
                'dense weight gradient': np.einsum('btd,btm->dm', X, dY)}
    for part, value in expected.items():
        for (framework_result,) in numbers[part]:
            np.testing.assert_allclose(framework_result, value, rtol=1e-4, atol=1e-4)


def test_layer_norm_backward_gives_all_three_gradients(results):
    inputs, numbers = results
    for dX, dscale, dbias in numbers['LayerNorm forward and backward']:
        assert dX.shape == inputs['X'].shape
        assert dscale.shape == dbias.shape == (SHAPES[2],)
        np.testing.assert_allclose(dbias, inputs['G'].sum(axis=(0, 1)), rtol=1e-4, atol=1e-4)


def test_the_configurations_have_the_token_counts_of_their_patches():
    assert step_parts.part_shapes(step_parts.CONFIGS['d2l 96x96x1 p16']) == (128, 37, 512, 2048)
    assert step_parts.part_shapes(step_parts.CONFIGS['UvA 32x32x3 p4']) == (128, 65, 256, 512)
