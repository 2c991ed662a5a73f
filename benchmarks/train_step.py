"""Speed and peak memory of one ViT training step: the chapter's model against timm.

Every implementation trains the same network (same widths, depth, heads,
dropout, minibatch) with the same step: forward pass, cross-entropy loss,
backward pass, clipping to global norm 1, SGD update. Each (implementation,
configuration) pair runs in a process of its own, so that no framework's
threads, caches or memory are counted against another's, and the table gives
the median of several timed steps after warm-up (min and max beside it), the
ratio to timm measured in the same run, and the peak memory of a step.

    python benchmarks/train_step.py                  # the table
    python benchmarks/train_step.py --json out.json  # and the numbers as JSON
    python benchmarks/train_step.py --dropout 0      # the step without dropout
    python benchmarks/train_step.py --bf16 --peak-tflops 989 \
        --configs 'd2l 96x96x1 p16' 'UvA 32x32x3 p4' 'ViT-B/16 224x224x3'   # on a GPU

Achieved TFLOP/s counts the operations of `vit_step_flops` (the exercise on
image sizes): the matrix products of the forward pass, times three for a
training step. With --bf16, PyTorch runs the forward pass under bfloat16
autocast, and JAX computes with bfloat16 copies of the float32 parameters and
inputs; gradients, optimizer and loss stay float32 in both.

Peak memory on a CPU is how far the process's resident set grows, at its peak,
over the warm-up and the timed steps, from where it stood with the model, the
minibatch and (in JAX) the compiled step in memory: activations, gradients,
optimizer state and temporaries. Linux resets the peak through
/proc/self/clear_refs. On a GPU it is the growth of the framework's peak
device memory in use.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

CONFIGS = {
    # img_size, patch_size, num_channels, num_hiddens, mlp_num_hiddens, num_heads, num_blks
    'd2l 96x96x1 p16': (96, 16, 1, 512, 2048, 8, 2),
    'UvA 32x32x3 p4': (32, 4, 3, 256, 512, 8, 6),
    'ViT-B/16 224x224x3': (224, 16, 3, 768, 3072, 12, 12),  # for a GPU
}
CPU_CONFIGS = ['d2l 96x96x1 p16', 'UvA 32x32x3 p4']
IMPLEMENTATIONS = ['timm', 'ours (PyTorch)', 'd2l original (PyTorch)', 'ours (JAX)']
BATCH_SIZE, LR, NUM_CLASSES = 128, 0.1, 10
DROPOUT = 0.1  # every dropout of the model; --dropout 0 times the step without


def peak_rss_reset():
    """Reset the peak resident set size of this process (Linux only)."""
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')


def rss_kib(field):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise RuntimeError(f'no {field} in /proc/self/status')


def torch_model(implementation, config, dropout):
    import torch
    from torch import nn
    from d2l import torch as d2l
    from d2l_extras import torch as extras
    img_size, patch_size, channels, width, mlp_width, heads, blocks = config
    if implementation == 'timm':
        from timm.models.vision_transformer import VisionTransformer
        # timm's proj_drop_rate is the dropout of the MLP (as ours) and after
        # the attention projection (which ours does not have)
        return VisionTransformer(img_size=img_size, patch_size=patch_size, in_chans=channels,
                                 num_classes=NUM_CLASSES, embed_dim=width, depth=blocks,
                                 num_heads=heads, mlp_ratio=mlp_width / width, qkv_bias=False,
                                 pos_drop_rate=dropout, proj_drop_rate=dropout,
                                 attn_drop_rate=dropout)
    model = extras.ViT(img_size, patch_size, width, mlp_width, heads, blocks, dropout,
                       dropout, LR, num_channels=channels)
    if implementation == 'd2l original (PyTorch)':
        class D2LBlock(nn.Module):
            """The block as d2l writes it: d2l.MultiHeadAttention, explicit softmax."""
            def __init__(self):
                super().__init__()
                self.ln1 = nn.LayerNorm(width, eps=1e-6)
                self.attention = d2l.MultiHeadAttention(width, heads, dropout)
                self.ln2 = nn.LayerNorm(width, eps=1e-6)
                self.mlp = extras.ViTMLP(mlp_width, width, dropout)

            def forward(self, X):
                X = X + self.attention(*([self.ln1(X)] * 3), None)
                return X + self.mlp(self.ln2(X))

        model.blks = nn.Sequential(*[D2LBlock() for _ in range(blocks)])
        model.initialize_weights()
    return model


def step_flops(config, library):
    """FLOPs of one training step, from the library of the framework measured
    (both have vit_step_flops), so a JAX worker never imports PyTorch."""
    img_size, patch_size, channels, width, mlp_width, heads, blocks = config
    return sum(library.vit_step_flops(img_size, patch_size, width, mlp_width, blocks,
                                      BATCH_SIZE, channels, NUM_CLASSES))


def time_torch(implementation, config, num_repeats, bf16, dropout):
    import torch
    from torch import nn
    from torch.nn import functional as F
    from d2l_extras import torch as extras
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    model = torch_model(implementation, config, dropout)

    class TrainingStepAdapter(nn.Module):
        """The model with the loss and optimizer that the library's timer calls
        (timm's model has neither), its forward pass under bfloat16 autocast if asked."""
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, X):
            with torch.autocast(X.device.type, torch.bfloat16, enabled=bf16):
                return self.model(X)

        def loss(self, Y_hat, Y):
            return F.cross_entropy(Y_hat.float(), Y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=LR)

    model = TrainingStepAdapter(model).to(device)
    img_size, channels = config[0], config[2]
    X = torch.rand(BATCH_SIZE, channels, img_size, img_size, device=device)
    y = torch.randint(0, NUM_CLASSES, (BATCH_SIZE,), device=device)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        peak_rss_reset()
        before = rss_kib('VmRSS') * 1024
    # The exercise on image sizes times the section's model with this too:
    # forward, loss, backward, clipping, SGD update; a warm-up step first
    times = extras.time_training_step(model, X, y, num_repeats)
    peak = torch.cuda.max_memory_allocated() if device.type == 'cuda' else rss_kib('VmHWM') * 1024
    return dict(times=list(times), peak_mib=(peak - before) / 2**20, compile_s=None,
                device=torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU',
                num_parameters=sum(p.numel() for p in model.parameters()))


def jax_model(config, dropout):
    from d2l_extras import jax as d2l
    img_size, patch_size, channels, width, mlp_width, heads, blocks = config
    return d2l.ViT(img_size, patch_size, width, mlp_width, heads, blocks, dropout, dropout,
                   LR, num_channels=channels)


def time_jax(config, num_repeats, bf16, dropout):
    import jax
    from jax import numpy as jnp
    from d2l_extras import jax as d2l
    img_size, channels = config[0], config[2]
    model = jax_model(config, dropout)
    X = jax.random.uniform(jax.random.key(1), (BATCH_SIZE, img_size, img_size, channels))
    y = jax.random.randint(jax.random.key(2), (BATCH_SIZE,), 0, NUM_CLASSES)
    # The Trainer's own jitted step (the section's exercise on image sizes
    # times it the same way), compiled ahead so compilation is timed apart
    trainer = d2l.Trainer(max_epochs=1, gradient_clip_val=1)
    trainer.prepare_model(model)
    state = trainer.init_state(model, jax.random.key(0), batch=(X, y))
    if bf16:
        def to_bf16(array):
            return array.astype(jnp.bfloat16) if jnp.issubdtype(array.dtype, jnp.floating) \
                else array

        def bf16_apply(variables, *inputs, **kwargs):
            """The model on bfloat16 copies of the float32 parameters and inputs;
            the copies are differentiable, so gradients reach the float32 ones."""
            output = model.apply(jax.tree.map(to_bf16, variables),
                                 *jax.tree.map(to_bf16, inputs), **kwargs)
            return jax.tree.map(lambda a: a.astype(jnp.float32), output)

        state = state.replace(apply_fn=bf16_apply)
    start = time.perf_counter()
    train_step = trainer.make_train_step().lower(state, (X, y)).compile()
    compile_s = time.perf_counter() - start
    device = jax.devices()[0]
    on_cpu = device.platform == 'cpu'
    if on_cpu:
        peak_rss_reset()
        before = rss_kib('VmRSS') * 1024
    else:  # the device's peak cannot be reset: measure from a fresh process's
        before = device.memory_stats()['bytes_in_use']
    state, loss = jax.block_until_ready(train_step(state, (X, y)))  # warm-up
    times = []
    for _ in range(num_repeats):
        start = time.perf_counter()
        state, loss = jax.block_until_ready(train_step(state, (X, y)))
        times.append(time.perf_counter() - start)
    peak = rss_kib('VmHWM') * 1024 if on_cpu else device.memory_stats()['peak_bytes_in_use']
    return dict(times=times, peak_mib=(peak - before) / 2**20, compile_s=compile_s,
                device='CPU' if on_cpu else device.device_kind,
                num_parameters=sum(p.size for p in jax.tree.leaves(state.params)))


def worker(implementation, config_name, num_repeats, bf16, dropout):
    config = CONFIGS[config_name]
    if implementation == 'ours (JAX)':
        from d2l_extras import jax as library
        result = time_jax(config, num_repeats, bf16, dropout)
    else:
        from d2l_extras import torch as library
        result = time_torch(implementation, config, num_repeats, bf16, dropout)
    return dict(result, flops=step_flops(config, library))


def run_worker(script, arguments, what):
    """Run ``script --worker arguments`` in a process of its own and return
    the JSON of its last line of output."""
    out = subprocess.run([sys.executable, script, '--worker', *arguments],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f'{what} failed:\n{out.stderr[-3000:]}')
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_in_subprocess(implementation, config_name, num_repeats, bf16, dropout):
    return run_worker(__file__, [implementation, config_name, '--repeats', str(num_repeats),
                                 '--dropout', str(dropout)] + (['--bf16'] if bf16 else []),
                      f'{implementation} on {config_name}')


def machine():
    import torch
    return dict(cpu=platform.processor() or platform.machine(), cores=os.cpu_count(),
                python=platform.python_version(), torch=torch.__version__,
                torch_threads=torch.get_num_threads())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--configs', nargs='+', choices=list(CONFIGS), default=CPU_CONFIGS)
    parser.add_argument('--bf16', action='store_true',
                        help='bfloat16 compute (PyTorch autocast; JAX bfloat16 copies)')
    parser.add_argument('--peak-tflops', type=float,
                        help="the device's peak TFLOP/s at this precision, for the 'of peak' column")
    parser.add_argument('--dropout', type=float, default=DROPOUT,
                        help='the rate of every dropout (0: the step without dropout)')
    parser.add_argument('--json', help='also write the results to this file')
    parser.add_argument('--worker', nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.repeats, args.bf16, args.dropout)))
        return
    rows = []
    for config_name in args.configs:
        for implementation in IMPLEMENTATIONS:
            result = run_in_subprocess(implementation, config_name, args.repeats, args.bf16,
                                       args.dropout)
            times = result.pop('times')
            seconds = statistics.median(times)
            rows.append(dict(result, implementation=implementation, config=config_name,
                             images_per_s=BATCH_SIZE / seconds,
                             images_per_s_min=BATCH_SIZE / max(times),
                             images_per_s_max=BATCH_SIZE / min(times),
                             tflops=result['flops'] / seconds / 1e12))
            print(f'measured {implementation} on {config_name}', file=sys.stderr)
    for row in rows:
        timm = next(r for r in rows if r['config'] == row['config'] and r['implementation'] == 'timm')
        row['ratio_to_timm'] = row['images_per_s'] / timm['images_per_s']
        if args.peak_tflops:
            row['fraction_of_peak'] = row['tflops'] / args.peak_tflops
    peak = ' of peak |' if args.peak_tflops else ''
    print(f'| implementation | configuration | images/s (median, min-max) | ratio to timm '
          f'| peak step memory | compile | TFLOP/s |{peak}\n'
          f'| --- | --- | --- | --- | --- | --- | --- |{" --- |" if peak else ""}')
    for row in rows:
        compile_s = f"{row['compile_s']:.1f} s" if row['compile_s'] is not None else '-'
        of_peak = f" {100 * row['fraction_of_peak']:.0f}% |" if peak else ''
        print(f"| {row['implementation']} | {row['config']} | {row['images_per_s']:.0f} "
              f"({row['images_per_s_min']:.0f}-{row['images_per_s_max']:.0f}) | "
              f"{row['ratio_to_timm']:.2f} | {row['peak_mib']:.0f} MiB | {compile_s} | "
              f"{row['tflops']:.3g} |{of_peak}")
    info = machine()
    devices = sorted({row['device'] for row in rows})
    print(f"\n{info['cores']} cores ({info['cpu']}), devices: {', '.join(devices)}; "
          f"Python {info['python']}, torch {info['torch']} with {info['torch_threads']} "
          f"threads; minibatch {BATCH_SIZE}, {'bfloat16' if args.bf16 else 'float32'}, "
          f'dropout {args.dropout:g}, '
          f'{args.repeats} timed steps each')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(machine=info, devices=devices, batch_size=BATCH_SIZE, dropout=args.dropout,
                           bf16=args.bf16, peak_tflops=args.peak_tflops,
                           repeats=args.repeats, results=rows), f, indent=1)


if __name__ == '__main__':
    main()
