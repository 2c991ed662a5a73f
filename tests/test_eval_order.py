"""tools/eval_both_tabs.py: a notebook that loads what another notebook of its
tab saves runs right after it, in the same slot, and each keeps its own time
in the log that benchmarks/book_time.py reads; every tab's kernels get the
environment of tools/kernel_env.py, which the other runners share."""
import logging
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'tools'))
sys.path.insert(0, str(ROOT / 'benchmarks'))
import book_time  # noqa: E402
import eval_both_tabs  # noqa: E402
import kernel_env  # noqa: E402


def task(name):
    """A task as d2lbook's eval makes it: (cpus, gpus, target, args, description)."""
    return (1, 0, print, (name,), f'Evaluating ./{name}.md')


def names(chains):
    return [[eval_both_tabs.notebook_name(item[-1]) for item in chain] for chain in chains]


def test_the_analysis_runs_after_the_section_that_saves_its_model():
    tasks = [task('chapter_vit/what-vit-learns'), task('chapter_vit/swin'),
             task('chapter_vit/vision-transformer')]
    assert names(eval_both_tabs.chains(tasks)) == [
        ['chapter_vit/swin'], ['chapter_vit/vision-transformer', 'chapter_vit/what-vit-learns']]


def test_a_notebook_runs_alone_when_the_one_it_needs_is_up_to_date():
    chains = names(eval_both_tabs.chains([task('chapter_vit/what-vit-learns')]))
    assert chains == [['chapter_vit/what-vit-learns']]


def test_a_chain_runs_every_notebook_in_order_and_logs_each_time(caplog):
    ran = []

    def fail(name):
        ran.append(name)
        raise RuntimeError(f'{name} failed')

    chain = [(fail, ('first',), 'Evaluating ./chapter_vit/vision-transformer.md'),
             (ran.append, ('second',), 'Evaluating ./chapter_vit/what-vit-learns.md')]
    with caplog.at_level(logging.INFO), pytest.raises(RuntimeError, match='first failed'):
        eval_both_tabs.run_one_after_another('jax', chain)
    assert ran == ['first', 'second']  # a failure does not stop the next notebook
    _, seconds = book_time.parse(caplog.text)
    assert seconds == {'jax': {'chapter_vit/vision-transformer': 0,
                               'chapter_vit/what-vit-learns': 0}}


def test_each_tab_gets_its_kernel_environment_and_its_own_additions(monkeypatch):
    monkeypatch.setattr(kernel_env.shutil, 'which', lambda name: None)  # no GPU
    monkeypatch.setattr(kernel_env.os, 'sched_getaffinity', lambda pid: {0, 1, 2, 3})
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    monkeypatch.delenv('JAX_COMPILATION_CACHE_DIR', raising=False)
    monkeypatch.setenv('XLA_FLAGS', '--xla_dump_to=/tmp/dump')
    env = eval_both_tabs.parse_env(None, ['pytorch', 'jax'], [('jax', 'EXTRA=1')], '/cache')
    assert env['pytorch'] == {'OMP_NUM_THREADS': '2'}  # two kernels share the cores
    assert env['jax'] == {'JAX_COMPILATION_CACHE_DIR': '/cache', 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
                          'XLA_FLAGS': '--xla_backend_optimization_level=2 --xla_dump_to=/tmp/dump',
                          'EXTRA': '1'}


def test_what_the_caller_set_wins_and_a_gpu_keeps_xlas_default(monkeypatch):
    monkeypatch.setattr(kernel_env.shutil, 'which', lambda name: '/usr/bin/nvidia-smi')
    environ = {'OMP_NUM_THREADS': '7', 'JAX_COMPILATION_CACHE_DIR': '/mine'}
    assert kernel_env.kernel_env('pytorch', '/cache', environ) == {'OMP_NUM_THREADS': '7'}
    jax_env = kernel_env.kernel_env('jax', '/cache', environ)
    assert (jax_env['JAX_COMPILATION_CACHE_DIR'], jax_env['XLA_FLAGS']) == ('/mine', '')
    with pytest.raises(ValueError, match="tab 'mxnet'.* pytorch and jax"):
        kernel_env.kernel_env('mxnet', '/cache', environ)
