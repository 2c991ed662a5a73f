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

Peak memory on a CPU is how far the process's resident set grows, at its peak,
over the warm-up and the timed steps, from where it stood with the model, the
minibatch and (in JAX) the compiled step in memory: activations, gradients,
optimizer state and temporaries. Linux resets the peak through
/proc/self/clear_refs.
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
}
IMPLEMENTATIONS = ['timm', 'ours (PyTorch)', 'd2l original (PyTorch)', 'ours (JAX)']
BATCH_SIZE, DROPOUT, LR, NUM_CLASSES = 128, 0.1, 0.1, 10


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


def torch_model(implementation, config):
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
                                 pos_drop_rate=DROPOUT, proj_drop_rate=DROPOUT,
                                 attn_drop_rate=DROPOUT)
    model = extras.ViT(img_size, patch_size, width, mlp_width, heads, blocks, DROPOUT,
                       DROPOUT, LR, num_channels=channels)
    if implementation == 'd2l original (PyTorch)':
        class D2LBlock(nn.Module):
            """The block as d2l writes it: d2l.MultiHeadAttention, explicit softmax."""
            def __init__(self):
                super().__init__()
                self.ln1 = nn.LayerNorm(width, eps=1e-6)
                self.attention = d2l.MultiHeadAttention(width, heads, DROPOUT)
                self.ln2 = nn.LayerNorm(width, eps=1e-6)
                self.mlp = extras.ViTMLP(mlp_width, width, DROPOUT)

            def forward(self, X):
                X = X + self.attention(*([self.ln1(X)] * 3), None)
                return X + self.mlp(self.ln2(X))

        model.blks = nn.Sequential(*[D2LBlock() for _ in range(blocks)])
        model.initialize_weights()
    return model


def time_torch(implementation, config, num_repeats):
    import torch
    from torch import nn
    from torch.nn import functional as F
    from d2l_extras import torch as extras
    model = torch_model(implementation, config)
    if implementation == 'timm':
        class TimmClassifier(nn.Module):
            """timm's model with the loss and optimizer the library's timer calls."""
            def __init__(self, vit):
                super().__init__()
                self.vit = vit

            def forward(self, X):
                return self.vit(X)

            def loss(self, Y_hat, Y):
                return F.cross_entropy(Y_hat, Y)

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=LR)

        model = TimmClassifier(model)
    img_size, channels = config[0], config[2]
    X = torch.rand(BATCH_SIZE, channels, img_size, img_size)
    y = torch.randint(0, NUM_CLASSES, (BATCH_SIZE,))
    peak_rss_reset()
    before = rss_kib('VmRSS')
    # The exercise on image sizes times the section's model with this too:
    # forward, loss, backward, clipping, SGD update; a warm-up step first
    times = extras.time_training_step(model, X, y, num_repeats)
    return dict(times=list(times), peak_mib=(rss_kib('VmHWM') - before) / 1024, compile_s=None,
                num_parameters=sum(p.numel() for p in model.parameters()))


def time_jax(config, num_repeats):
    import jax
    from d2l_extras import jax as d2l
    img_size, patch_size, channels, width, mlp_width, heads, blocks = config
    model = d2l.ViT(img_size, patch_size, width, mlp_width, heads, blocks, DROPOUT, DROPOUT,
                    LR, num_channels=channels)
    X = jax.random.uniform(jax.random.key(1), (BATCH_SIZE, img_size, img_size, channels))
    y = jax.random.randint(jax.random.key(2), (BATCH_SIZE,), 0, NUM_CLASSES)
    # The Trainer's own jitted step (the section's exercise on image sizes
    # times it the same way), compiled ahead so compilation is timed apart
    trainer = d2l.Trainer(max_epochs=1, gradient_clip_val=1)
    trainer.prepare_model(model)
    state = trainer.init_state(model, jax.random.key(0), batch=(X, y))
    start = time.perf_counter()
    train_step = trainer.make_train_step().lower(state, (X, y)).compile()
    compile_s = time.perf_counter() - start
    peak_rss_reset()
    before = rss_kib('VmRSS')
    state, loss = jax.block_until_ready(train_step(state, (X, y)))  # warm-up
    times = []
    for _ in range(num_repeats):
        start = time.perf_counter()
        state, loss = jax.block_until_ready(train_step(state, (X, y)))
        times.append(time.perf_counter() - start)
    return dict(times=times, peak_mib=(rss_kib('VmHWM') - before) / 1024, compile_s=compile_s,
                num_parameters=sum(p.size for p in jax.tree.leaves(state.params)))


def worker(implementation, config_name, num_repeats):
    config = CONFIGS[config_name]
    if implementation == 'ours (JAX)':
        return time_jax(config, num_repeats)
    return time_torch(implementation, config, num_repeats)


def run_in_subprocess(implementation, config_name, num_repeats):
    out = subprocess.run([sys.executable, __file__, '--worker', implementation, config_name,
                          '--repeats', str(num_repeats)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f'{implementation} on {config_name} failed:\n{out.stderr[-3000:]}')
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine():
    import torch
    return dict(cpu=platform.processor() or platform.machine(), cores=os.cpu_count(),
                python=platform.python_version(), torch=torch.__version__,
                torch_threads=torch.get_num_threads())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--json', help='also write the results to this file')
    parser.add_argument('--worker', nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.repeats)))
        return
    rows = []
    for config_name in CONFIGS:
        for implementation in IMPLEMENTATIONS:
            result = run_in_subprocess(implementation, config_name, args.repeats)
            times = result.pop('times')
            rows.append(dict(result, implementation=implementation, config=config_name,
                             images_per_s=BATCH_SIZE / statistics.median(times),
                             images_per_s_min=BATCH_SIZE / max(times),
                             images_per_s_max=BATCH_SIZE / min(times)))
            print(f'measured {implementation} on {config_name}', file=sys.stderr)
    for row in rows:
        timm = next(r for r in rows if r['config'] == row['config'] and r['implementation'] == 'timm')
        row['ratio_to_timm'] = row['images_per_s'] / timm['images_per_s']
    print(f'| implementation | configuration | images/s (median, min-max) | ratio to timm '
          f'| peak step memory | compile |\n| --- | --- | --- | --- | --- | --- |')
    for row in rows:
        compile_s = f"{row['compile_s']:.1f} s" if row['compile_s'] is not None else '-'
        print(f"| {row['implementation']} | {row['config']} | {row['images_per_s']:.0f} "
              f"({row['images_per_s_min']:.0f}-{row['images_per_s_max']:.0f}) | "
              f"{row['ratio_to_timm']:.2f} | {row['peak_mib']:.0f} MiB | {compile_s} |")
    info = machine()
    print(f"\n{info['cores']} cores ({info['cpu']}), Python {info['python']}, "
          f"torch {info['torch']} with {info['torch_threads']} threads; "
          f'minibatch {BATCH_SIZE}, float32, {args.repeats} timed steps each')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(machine=info, batch_size=BATCH_SIZE, repeats=args.repeats,
                           results=rows), f, indent=1)


if __name__ == '__main__':
    main()
