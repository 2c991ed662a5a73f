"""The remaining pages' reference runs and the GPU benchmark, in one call on a
lent GPU machine (no network; torch, torchvision, jax, flax, optax, timm and
scikit-learn installed).

Here, with the package registry, once (writes build/gpu_carry/, about 35 MiB):

    .venv/bin/python tools/gpu_reference_runs.py prepare

Then, through the device tool, from the repository root, carrying build/gpu_carry:

    python3 tools/gpu_reference_runs.py run --minutes 12

`run` installs what the machine lacks from the carried wheels (d2l without
its pins; of d2l's imports, the H200 image lacks IPython and
matplotlib_inline, see the device tool's KINDS.md), reads
the carried Fashion-MNIST files, runs the pages' PyTorch tabs at the full
settings, most valuable first, each while time is left, then
benchmarks/train_step.py with bfloat16 and ViT-B/16. Into $OUT go the new
records and kept parameters (copy them into d2l_extras/reference_runs/), the
benchmark's JSON (into benchmarks/results/) and the log.
"""
import argparse
import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
CARRY = ROOT / 'build' / 'gpu_carry'
PAGES = ('exercise-accuracy', 'vit-vs-cnn', 'exercise-pooling', 'position-embeddings',
         'training-recipe', 'deit', 'swin', 'masked-autoencoder')
BENCHMARK_MINUTES = 3
H200_BF16_TFLOPS = 989  # dense, from NVIDIA's data sheet
# Imported by d2l.torch or the chapter, but not by the frameworks: the
# module to try, then the wheels that provide it (numpy comes with torch).
EXTRAS = {
    'matplotlib': ['matplotlib', 'contourpy', 'cycler', 'fonttools', 'kiwisolver',
                   'pyparsing', 'python-dateutil', 'six', 'packaging'],  # pillow: torchvision's
    'matplotlib_inline': ['matplotlib-inline', 'traitlets'],
    'IPython': ['ipython', 'ipython_pygments_lexers', 'traitlets', 'jedi', 'parso', 'pexpect',
                'ptyprocess', 'prompt_toolkit', 'wcwidth', 'Pygments', 'decorator', 'stack-data',
                'asttokens', 'executing', 'pure_eval'],
    'pandas': ['pandas', 'python-dateutil', 'six', 'tzdata'],
    'requests': ['requests', 'charset_normalizer', 'idna', 'urllib3', 'certifi'],
}
COMPILED = ('matplotlib', 'contourpy', 'kiwisolver', 'pandas')  # the rest: pure-Python wheels
MISSING_ON_H200 = ('IPython', 'matplotlib_inline')


def pinned(names):
    """``name==version`` from constraints.txt, the versions the book is tested
    with; the bare name for what it does not pin."""
    versions = {}
    for line in (ROOT / 'constraints.txt').read_text().splitlines():
        if '==' in line and not line.startswith('#'):
            name, version = line.split('==')
            versions[name.lower().replace('_', '-')] = version.strip()
    keys = [name.lower().replace('_', '-') for name in names]
    return [f'{name}=={versions[key]}' if key in versions else name
            for name, key in zip(names, keys)]


def prepare(args):
    wheels = CARRY / 'wheels'
    wheels.mkdir(parents=True, exist_ok=True)
    names = sorted({name for module in args.modules for name in EXTRAS[module]})
    download = [sys.executable, '-m', 'pip', 'download', '--quiet', '--no-deps',
                '--only-binary=:all:', '--python-version', args.python_version, '-d', str(wheels)]
    compiled = [name for name in names if name in COMPILED]
    if compiled:
        subprocess.run(download + ['--platform', 'manylinux2014_x86_64', '--platform',
                                   'manylinux_2_28_x86_64', *pinned(compiled)], check=True)
    subprocess.run(download + ['--platform', 'any', 'd2l==1.0.3',
                               *pinned([n for n in names if n not in COMPILED])], check=True)
    data = CARRY / 'fashion-mnist'
    data.mkdir(exist_ok=True)
    from d2l_extras.data import fashion_mnist
    source = fashion_mnist.system_copy()
    if source is None:
        sys.exit('no copy of Fashion-MNIST on this machine: apt-get install dataset-fashion-mnist')
    for file_name, _ in fashion_mnist.FILES.values():
        shutil.copy2(source / file_name, data / file_name)
    size = sum(p.stat().st_size for p in CARRY.rglob('*') if p.is_file())
    print(f'{CARRY}: {size / 2**20:.1f} MiB (the device tool carries at most 64 MiB)')
    if size > 64 * 2**20:
        sys.exit('too large to carry: drop wheels the GPU machine has')


def install_missing(site, log):
    """Install from the carried wheels, into ``site``, what cannot be imported."""
    wheels = CARRY / 'wheels'
    missing = [module for module in EXTRAS if importlib.util.find_spec(module) is None]
    absent = [module for module in missing if not any(
        wheels.glob(EXTRAS[module][0].replace('-', '_') + '-*.whl'))]
    if absent:
        sys.exit(f'{absent} cannot be imported here and were not carried: '
                 f'prepare --modules {" ".join(absent)} and run again')
    packages = sorted({name for module in missing for name in EXTRAS[module]})
    log(f'missing here: {missing or "nothing"}; installing d2l{" and " if packages else ""}'
        f'{", ".join(packages)} from {wheels}')
    subprocess.run([sys.executable, '-m', 'pip', 'install', '--quiet', '--no-index', '--no-deps',
                    '--find-links', str(wheels), '--target', str(site), 'd2l==1.0.3',
                    *pinned(packages)], check=True)


def run(args):
    deadline = time.monotonic() + 60 * args.minutes
    out = pathlib.Path(os.environ.get('OUT', ROOT / 'build' / 'gpu_out'))
    out.mkdir(parents=True, exist_ok=True)
    log_file = open(out / 'gpu_reference_runs.log', 'a')

    def log(line):
        print(line, flush=True)
        print(line, file=log_file, flush=True)

    site = ROOT / 'build' / 'gpu_site'
    install_missing(site, log)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(site)]),
               D2L_VIT_FASHION_MNIST=str(CARRY / 'fashion-mnist'), MPLBACKEND='Agg')
    records = ROOT / 'd2l_extras' / 'reference_runs'
    before = {p.name: p.stat().st_mtime for p in records.glob('*')}
    for page in PAGES:
        left = deadline - time.monotonic() - 60 * BENCHMARK_MINUTES
        if left < 60:
            log(f'{page}: skipped, {left:.0f} s left before the benchmark')
            continue
        start = time.monotonic()
        try:
            result = subprocess.run(
                [sys.executable, 'tools/reference_runs.py', page, '--tabs', 'pytorch', '--script',
                 '--out', str(ROOT / 'build' / 'gpu_reference')],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=left)
            log(result.stdout[-3000:] + result.stderr[-3000:])
            log(f'{page}: exit {result.returncode} after {time.monotonic() - start:.0f} s')
        except subprocess.TimeoutExpired:
            log(f'{page}: stopped after {left:.0f} s, the time left; not recorded')
    left = max(60, deadline - time.monotonic())
    try:
        result = subprocess.run(
            [sys.executable, 'benchmarks/train_step.py', '--bf16', '--peak-tflops',
             str(args.peak_tflops), '--configs', 'd2l 96x96x1 p16', 'UvA 32x32x3 p4',
             'ViT-B/16 224x224x3', '--json', str(out / 'train_step_gpu.json')],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=left)
        log(result.stdout[-6000:] + result.stderr[-3000:])
    except subprocess.TimeoutExpired:
        log(f'benchmark: stopped after {left:.0f} s')
    (out / 'reference_runs').mkdir(exist_ok=True)
    for path in records.glob('*'):
        if before.get(path.name) != path.stat().st_mtime:
            shutil.copy2(path, out / 'reference_runs' / path.name)
            log(f'new: {path.name}')


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest='command', required=True)
    p = commands.add_parser('prepare', help='download the wheels, copy the data')
    p.add_argument('--python-version', default='3.12', help="the GPU machine's Python")
    p.add_argument('--modules', nargs='+', choices=sorted(EXTRAS), default=MISSING_ON_H200,
                   help="what the GPU machine cannot import (default: the H200 image's gaps)")
    r = commands.add_parser('run', help='on the GPU machine')
    r.add_argument('--minutes', type=float, default=12, help='all of it, benchmark included')
    r.add_argument('--peak-tflops', type=float, default=H200_BF16_TFLOPS)
    args = parser.parse_args()
    (prepare if args.command == 'prepare' else run)(args)


if __name__ == '__main__':
    main()
