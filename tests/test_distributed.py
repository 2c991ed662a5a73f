"""Training on several devices (chapter_vit/distributed.md), on the CPU: two
DDP processes with minibatches of 64 take the same step as one process with
the 128 examples of both; FSDP2 leaves each of two processes half of the
parameters, gradients and AdamW state; in JAX, the Trainer's step on a
minibatch split over two devices takes the same step as on one device, and
the MLP split over two devices (tensor parallelism) gives the same logits,
with one all-reduce per block.

The processes and the JAX programs with two CPU devices run in subprocesses
of their own, each with a timeout: this pytest process may already have
started JAX with one device, and a hung process group must not hang the
tests. The notebook itself is evaluated in both tabs by test_book.py.
"""
import ast
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
import torch

from d2l_extras import torch as torch_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT = 300  # seconds; each of these takes well under a minute


@pytest.fixture
def subprocess_environment(monkeypatch):
    """Subprocesses import this checkout's library, on the CPU only."""
    path = os.environ.get('PYTHONPATH')
    monkeypatch.setenv('PYTHONPATH', str(ROOT) + (os.pathsep + path if path else ''))
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '')
    monkeypatch.setenv('JAX_PLATFORMS', 'cpu')


def torchrun(tmp_path, code, *args):
    """Run `code` as a script in two processes, as the page's torchrun does."""
    script = tmp_path / 'worker.py'
    script.write_text(textwrap.dedent(code))
    try:
        return torch_lib.torchrun(script, 2, *args, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f'two processes of {script.name} did not finish in {TIMEOUT} s '
                    '(a process group that never formed, or a collective that hangs)')


DDP_STEP = """
    import sys
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP
    from d2l_extras import torch as d2l

    rank, world_size, device = d2l.init_distributed()
    data = d2l.UCIDigits(batch_size=64, resize=(16, 16))
    torch.manual_seed(rank)  # different in each process: DDP broadcasts rank 0's
    model = d2l.ViT(16, 4, 32, 64, 2, 2, 0, 0, 0.1)
    ddp_model = DDP(model)
    X, y = next(iter(d2l.distributed_dataloader(data, rank, world_size)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    d2l.train_minibatch(ddp_model, model.configure_optimizers(), X, y)
    torch.save({'X': X, 'y': y, 'before': before, 'after': model.state_dict()},
               f'{sys.argv[1]}-{rank}.pt')
    torch.distributed.destroy_process_group()
"""


def test_two_ddp_processes_of_64_take_the_same_step_as_one_of_128(tmp_path, subprocess_environment):
    torchrun(tmp_path, DDP_STEP, tmp_path / 'step')
    parts = [torch.load(tmp_path / f'step-{rank}.pt') for rank in range(2)]
    # The sampler dealt each process its own 64 examples
    assert [len(part['y']) for part in parts] == [64, 64]
    assert not torch.equal(parts[0]['X'], parts[1]['X'])
    # Both started from process 0's parameters and ended with the same ones
    for name in parts[0]['before']:
        assert torch.equal(parts[0]['before'][name], parts[1]['before'][name]), name
        assert torch.equal(parts[0]['after'][name], parts[1]['after'][name]), name
    # One process, the 128 examples of both, the same step up to rounding
    torch.manual_seed(0)
    model = torch_lib.ViT(16, 4, 32, 64, 2, 2, 0, 0, 0.1)
    model.load_state_dict(parts[0]['before'])
    X = torch.cat([part['X'] for part in parts])
    y = torch.cat([part['y'] for part in parts])
    torch_lib.train_minibatch(model, model.configure_optimizers(), X, y)
    after = model.state_dict()
    moved = max(float((after[k] - parts[0]['before'][k]).abs().max()) for k in after)
    assert moved > 1e-3, 'the step changed nothing: the comparison would prove nothing'
    for name in after:
        torch.testing.assert_close(parts[0]['after'][name], after[name], msg=name)


FSDP_MEMORY = """
    import sys
    import torch
    from torch.distributed.fsdp import fully_shard
    from d2l_extras import torch as d2l

    rank, world_size, device = d2l.init_distributed()
    model = d2l.ViT(16, 4, 32, 64, 2, 2, 0.1, 0.1, use_bias=True)
    num_params = sum(p.numel() for p in model.parameters())
    for blk in model.blks:
        fully_shard(blk)
    fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    d2l.train_minibatch(model, optimizer, torch.rand(4, 1, 16, 16),
                        torch.tensor([0, 1, 2, 3]))
    moments = [state[name] for state in optimizer.state.values()
               for name in ('exp_avg', 'exp_avg_sq')]
    held = [d2l.local_bytes(model.parameters()),
            d2l.local_bytes(p.grad for p in model.parameters()),
            d2l.local_bytes(moments)]
    everyone = [None] * world_size
    torch.distributed.all_gather_object(everyone, held)
    if rank == 0:
        print(num_params, everyone)
    torch.distributed.destroy_process_group()
"""


def test_fsdp_leaves_each_of_two_processes_half_of_params_grads_and_adamw_state(
        tmp_path, subprocess_environment):
    output = torchrun(tmp_path, FSDP_MEMORY).strip().splitlines()[-1]
    num_params, held = output.split(' ', 1)
    held = ast.literal_eval(held)  # [[params, grads, moments] of each process]
    whole = 4 * int(num_params)  # float32
    for index, (what, factor) in enumerate([('parameters', 1), ('gradients', 1),
                                            ('AdamW moments', 2)]):
        shares = [process[index] for process in held]
        assert sum(shares) == factor * whole, what  # split, nothing lost or doubled
        for share in shares:  # and nearly in halves: few parameters cannot be halved
            assert abs(share - factor * whole / 2) < 0.05 * factor * whole, (what, shares)


def run_with_two_cpu_devices(*parts):
    """Run the JAX code of `parts`, one after the other, in a new process
    whose CPU is two devices, with the chapter's library as `d2l`; return
    what it printed."""
    preamble = """
        import jax
        jax.config.update('jax_num_cpu_devices', 2)
        import numpy as np
        from jax import numpy as jnp
        from jax.sharding import AxisType
        from d2l_extras import jax as d2l
        assert jax.device_count() == 2, jax.devices()
    """
    try:
        result = subprocess.run([sys.executable, '-c', ''.join(textwrap.dedent(part) for part in (preamble,) + parts)],
                                capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f'the JAX program with two CPU devices did not finish in {TIMEOUT} s')
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout


JAX_MODEL = """
    mesh = jax.make_mesh((2,), ('data',), axis_types=(AxisType.Auto,))
    data = d2l.UCIDigits(batch_size=64, resize=(16, 16))
    model = d2l.ViT(16, 4, 32, 64, 2, 2, 0, 0, 0.1)
    trainer = d2l.Trainer(max_epochs=1)
    trainer.prepare_data(data)
    trainer.prepare_model(model)
    batch = next(iter(trainer.train_dataloader))
    state = trainer.init_state(model, jax.random.key(0), batch)
    step = trainer.make_train_step()
"""


def test_the_data_parallel_step_is_the_single_device_step(subprocess_environment):
    output = run_with_two_cpu_devices(JAX_MODEL, """
        initial = [np.asarray(p) for p in jax.tree.leaves(state.params)]
        one_device, _ = step(jax.tree.map(jnp.copy, state), batch)
        sharded_batch = d2l.shard_batch(batch, mesh)
        assert [s.data.shape[0] for s in sharded_batch[0].addressable_shards] == [32, 32]
        data_parallel, _ = step(d2l.replicate(state, mesh), sharded_batch)
        moved = max(float(np.abs(a - b).max()) for a, b in zip(
            initial, jax.tree.leaves(one_device.params)))
        assert moved > 1e-3, 'the step changed nothing: the check would prove nothing'
        for a, b in zip(jax.tree.leaves(one_device.params),
                        jax.tree.leaves(data_parallel.params)):
            assert len(b.sharding.device_set) == 2 and b.sharding.is_fully_replicated
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        found = d2l.collectives(step.lower(data_parallel, sharded_batch).compile())
        print('collectives', sorted({operation for operation, _, _ in found}))
    """)
    assert "collectives ['all-reduce']" in output


def test_the_data_parallel_trainer_trains_on_both_devices(subprocess_environment):
    output = run_with_two_cpu_devices(JAX_MODEL, """
        trainer = d2l.DataParallelTrainer(1, mesh, gradient_clip_val=1)
        trainer.fit(model, data, key=jax.random.key(0))
        kernel = trainer.state.params['head']['layers_1']['kernel']
        print('replicated on', len(kernel.sharding.device_set), 'devices,',
              'step', int(trainer.state.step))
    """)
    # 1,413 digits in minibatches of 64: 23 steps, the last of 4 of its 5 examples
    assert 'replicated on 2 devices, step 23' in output


def test_tensor_parallel_mlp_gives_the_unsharded_logits(subprocess_environment):
    output = run_with_two_cpu_devices(JAX_MODEL, """
        mesh = jax.make_mesh((2,), ('model',), axis_types=(AxisType.Auto,))
        params = d2l.replicate(state.params, mesh)
        # random biases and head, so that no zero hides a mismatch
        params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(
            jax.random.key(p.size), p.shape), params)
        specs = d2l.mlp_tensor_parallel(params)
        tp_params = jax.device_put(params, jax.tree.map(
            lambda spec: jax.sharding.NamedSharding(mesh, spec), specs))
        dense1 = tp_params['blks_0']['mlp']['dense1']['kernel']
        dense2 = tp_params['blks_1']['mlp']['dense2']['kernel']
        assert [s.data.shape for s in dense1.addressable_shards] == [(32, 32)] * 2
        assert [s.data.shape for s in dense2.addressable_shards] == [(32, 32)] * 2
        # the first layer by columns, the second by rows
        assert [str(s.index) for s in dense1.addressable_shards] == [
            str((slice(None), slice(0, 32))), str((slice(None), slice(32, 64)))]
        assert [str(s.index) for s in dense2.addressable_shards] == [
            str((slice(0, 32), slice(None))), str((slice(32, 64), slice(None)))]
        logits = jax.jit(lambda params, X: model.apply({'params': params}, X))
        X = batch[0]
        expected, computed = logits(params, X), logits(tp_params, X)
        assert float(jnp.abs(expected).max()) > 0.1
        np.testing.assert_allclose(computed, expected, rtol=1e-5, atol=1e-5)
        for found in d2l.collectives(logits.lower(tp_params, X).compile()):
            print(*found)
    """)
    found = [line for line in output.splitlines() if line.startswith('all-')]
    assert found == ['all-reduce 1 jit(<lambda>)/ViT/blks_0/mlp/dense2/dot_general',
                     'all-reduce 1 jit(<lambda>)/ViT/blks_1/mlp/dense2/dot_general'], output
