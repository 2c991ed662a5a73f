"""The environment of the book's Jupyter kernels, one tab at a time.

`make eval` (tools/eval_both_tabs.py), tools/eval_page.py and the Colab test
(tests/test_colab_run.py) give their kernels these settings, so that a page
takes as long in each. Why these, with the measurements: benchmarks/README.md,
"Building the book".
"""
import os
import shutil


def kernel_env(tab, jax_cache, environ=None):
    """{name: value} to add to the environment of the tab's kernels: half of
    the cores for each PyTorch kernel, since two kernels share the machine;
    for JAX, a persistent compilation cache at `jax_cache` and, on a CPU,
    XLA's -O2, which compiles faster than its default -O3. A value that
    `environ` (default: os.environ) already sets is kept; XLA_FLAGS are added to."""
    environ = os.environ if environ is None else environ
    if tab == 'pytorch':
        half = max(len(os.sched_getaffinity(0)) // 2, 1)
        return {'OMP_NUM_THREADS': environ.get('OMP_NUM_THREADS', str(half))}
    if tab == 'jax':
        flags = environ.get('XLA_FLAGS', '')
        if not shutil.which('nvidia-smi'):
            flags = f'--xla_backend_optimization_level=2 {flags}'.strip()
        return {'JAX_COMPILATION_CACHE_DIR': environ.get('JAX_COMPILATION_CACHE_DIR', str(jax_cache)),
                'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0', 'XLA_FLAGS': flags}
    raise ValueError(f'no kernel environment for the tab {tab!r}: the tabs are pytorch and jax')
