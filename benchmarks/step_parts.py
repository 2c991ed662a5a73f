"""The parts of a ViT training step, each timed alone, in PyTorch and in JAX.

`train_step.py` times whole steps; this script times their largest parts on
their own, at the same configurations, to tell whether a gap between the two
frameworks lies in the parts or in how a step puts them together:

* the three products of the MLP's first dense layer: the forward product, the
  input gradient and the weight gradient, each laid out as the framework's own
  dense layer and its backward pass lay it out;
* layer normalization, forward, and forward and backward together (the
  gradients of its input, scale and bias).

Each part computes the same numbers in both frameworks from the same inputs
(tests/test_step_parts.py checks it). Each framework runs in a process of its
own, and the table gives the median of the timed calls after two warm-up calls
(JAX: of the compiled function).

    python benchmarks/step_parts.py [--repeats 20] [--json out.json]
"""
import argparse
import importlib.metadata
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_step import BATCH_SIZE, CONFIGS, CPU_CONFIGS, machine, run_worker  # noqa: E402

FRAMEWORKS = ['PyTorch', 'JAX']
PARTS = ['dense forward', 'dense input gradient', 'dense weight gradient',
         'LayerNorm forward', 'LayerNorm forward and backward']
LAYER_NORM_EPS = 1e-6


def part_shapes(config, batch_size=BATCH_SIZE):
    """(batch size, tokens, width, MLP width) of a configuration's MLP."""
    img_size, patch_size, _, num_hiddens, mlp_num_hiddens = config[:5]
    num_tokens = (img_size // patch_size) ** 2 + 1  # the patches and the class token
    return batch_size, num_tokens, num_hiddens, mlp_num_hiddens


def part_inputs(shapes, seed=0):
    """The same float32 inputs for both frameworks: tokens X, the dense
    layer's kernel W (width, MLP width), its output's gradient dY, and the
    gradient G of the normalized tokens."""
    batch_size, num_tokens, num_hiddens, mlp_num_hiddens = shapes
    rng = np.random.default_rng(seed)
    normal = lambda *shape: rng.standard_normal(shape, dtype=np.float32)
    return dict(X=normal(batch_size, num_tokens, num_hiddens),
                W=normal(num_hiddens, mlp_num_hiddens) / np.float32(num_hiddens ** 0.5),
                dY=normal(batch_size, num_tokens, mlp_num_hiddens),
                G=normal(batch_size, num_tokens, num_hiddens))


def part_flops(part, shapes):
    """Floating-point operations of a product (None for the other parts)."""
    batch_size, num_tokens, num_hiddens, mlp_num_hiddens = shapes
    return 2 * batch_size * num_tokens * num_hiddens * mlp_num_hiddens if 'dense' in part else None


def torch_parts(inputs):
    """Each part as a function of no arguments (``torch_numbers`` turns its
    result into NumPy)."""
    import torch
    import torch.nn.functional as F
    X, dY, G = (torch.from_numpy(inputs[k]) for k in ('X', 'dY', 'G'))
    # nn.Linear keeps its weight as (out, in) and computes X W^T; autograd
    # then computes dX = dY W and dW = dY^T X over the flattened tokens.
    weight = torch.from_numpy(np.ascontiguousarray(inputs['W'].T))
    width = X.shape[-1]
    scale = torch.ones(width, requires_grad=True)
    bias = torch.zeros(width, requires_grad=True)
    X_leaf = X.clone().requires_grad_()

    def layer_norm(X):
        return F.layer_norm(X, (width,), scale, bias, LAYER_NORM_EPS)

    def without_grad(f):
        def call():
            with torch.no_grad():
                return f()
        return call

    return {
        'dense forward': without_grad(lambda: F.linear(X, weight)),
        'dense input gradient': without_grad(lambda: dY @ weight),
        'dense weight gradient': without_grad(
            lambda: dY.reshape(-1, dY.shape[-1]).T @ X.reshape(-1, width)),
        'LayerNorm forward': without_grad(lambda: layer_norm(X)),
        # The gradients of the input, the scale and the bias, as in a step
        'LayerNorm forward and backward': lambda: torch.autograd.grad(
            layer_norm(X_leaf), (X_leaf, scale, bias), G),
    }


def torch_numbers(result):
    """A part's results as a tuple of NumPy arrays, in JAX's layout (kernels
    as (in, out))."""
    results = result if isinstance(result, tuple) else (result,)
    arrays = (r.detach().numpy() for r in results)
    return tuple(a.T if a.ndim == 2 else a for a in arrays)


def jax_parts(inputs):
    """Each part as a compiled function of no arguments, blocking until its
    result is ready."""
    import jax
    import jax.numpy as jnp
    from flax import linen as nn
    X, W, dY, G = (jnp.asarray(inputs[k]) for k in ('X', 'W', 'dY', 'G'))
    dense = nn.Dense(W.shape[1], use_bias=False)
    layer_norm = nn.LayerNorm(epsilon=LAYER_NORM_EPS)
    layer_norm_params = layer_norm.init(jax.random.key(0), X)

    def dense_forward(X, W):
        return dense.apply({'params': {'kernel': W}}, X)

    def dense_gradients(X, W, dY):
        # The products as JAX's autodiff writes them; each part keeps one,
        # and XLA drops the forward product, which neither gradient needs.
        return jax.vjp(dense_forward, X, W)[1](dY)

    def layer_norm_forward(X, params=layer_norm_params):
        return layer_norm.apply(params, X)

    def layer_norm_backward(X, G):
        # The gradients of the input, the scale and the bias, as in a step
        dX, grads = jax.vjp(layer_norm_forward, X, layer_norm_params)[1](G)
        return dX, grads['params']['scale'], grads['params']['bias']

    parts = {
        'dense forward': (dense_forward, (X, W)),
        'dense input gradient': (lambda *a: dense_gradients(*a)[0], (X, W, dY)),
        'dense weight gradient': (lambda *a: dense_gradients(*a)[1], (X, W, dY)),
        'LayerNorm forward': (layer_norm_forward, (X,)),
        'LayerNorm forward and backward': (layer_norm_backward, (X, G)),
    }
    return {name: (lambda f=jax.jit(f), args=args: jax.block_until_ready(f(*args)))
            for name, (f, args) in parts.items()}


def jax_numbers(result):
    """A part's results as a tuple of NumPy arrays."""
    return tuple(np.asarray(r) for r in (result if isinstance(result, tuple) else (result,)))


def median_seconds(call, num_repeats):
    """The median time of a call, after two warm-up calls (which compile)."""
    call(), call()
    times = []
    for _ in range(num_repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def worker(framework, config_name, num_repeats):
    shapes = part_shapes(CONFIGS[config_name])
    make_parts = torch_parts if framework == 'PyTorch' else jax_parts
    parts = make_parts(part_inputs(shapes))
    return {name: median_seconds(parts[name], num_repeats) for name in PARTS}


def run_in_subprocess(framework, config_name, num_repeats):
    return run_worker(__file__, [framework, config_name, '--repeats', str(num_repeats)],
                      f'{framework} on {config_name}')


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=int, default=20)
    parser.add_argument('--configs', nargs='+', choices=list(CONFIGS), default=CPU_CONFIGS)
    parser.add_argument('--json', help='also write the results to this file')
    parser.add_argument('--worker', nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.repeats)))
        return
    rows = []
    for config_name in args.configs:
        seconds = {framework: run_in_subprocess(framework, config_name, args.repeats)
                   for framework in FRAMEWORKS}
        shapes = part_shapes(CONFIGS[config_name])
        for part in PARTS:
            flops = part_flops(part, shapes)
            rows.append(dict(part=part, config=config_name, flops=flops,
                             **{f'{framework}_ms': 1e3 * seconds[framework][part]
                                for framework in FRAMEWORKS}))
    print('| part | configuration | PyTorch | JAX | JAX time / PyTorch time |\n'
          '| --- | --- | --- | --- | --- |')
    for row in rows:
        cells = []
        for framework in FRAMEWORKS:
            ms = row[f'{framework}_ms']
            rate = f", {row['flops'] / ms / 1e6:.0f} GFLOP/s" if row['flops'] else ''
            cells.append(f'{ms:.1f} ms{rate}')
        print(f"| {row['part']} | {row['config']} | {cells[0]} | {cells[1]} | "
              f"{row['JAX_ms'] / row['PyTorch_ms']:.2f} |")
    info = dict(machine(), jax=importlib.metadata.version('jax'),
                flax=importlib.metadata.version('flax'))
    print(f"\n{info['cores']} cores ({info['cpu']}); Python {info['python']}, torch "
          f"{info['torch']} with {info['torch_threads']} threads, jax {info['jax']}, "
          f"flax {info['flax']}; minibatch {BATCH_SIZE}, "
          f'float32, median of {args.repeats} calls each')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(machine=info, batch_size=BATCH_SIZE, repeats=args.repeats,
                           results=rows), f, indent=1)


if __name__ == '__main__':
    main()
