"""Make torchvision 0.28 importable next to a CPU-only torch (run by the Makefile).

Why: `from d2l import torch as d2l` imports torchvision. The only torchvision
wheel for torch 2.13 on PyPI is built for CUDA; next to the CPU torch its
compiled ops are missing, and `import torchvision` fails with
"operator torchvision::nms does not exist", because two `register_fake`
decorators in torchvision/_meta_registrations.py are not guarded by
`torchvision.extension._has_ops()` like their neighbours (upstream bug
pytorch/vision#9085). This script adds that guard to those two decorators.

It changes nothing when torchvision already imports (a CUDA torch, a fixed
torchvision release, Colab), so it is safe to run after every install.
"""
import pathlib
import subprocess
import sys

SYMPTOM = 'operator torchvision::nms does not exist'
GUARD = 'if torchvision.extension._has_ops() else (lambda fn: fn)'


def import_error():
    result = subprocess.run([sys.executable, '-c', 'import torchvision'],
                            capture_output=True, text=True)
    return None if result.returncode == 0 else result.stderr


def main():
    error = import_error()
    if error is None:
        return 0
    if SYMPTOM not in error:
        print(f'torchvision fails to import for another reason:\n{error}', file=sys.stderr)
        return 1
    import importlib.util
    spec = importlib.util.find_spec('torchvision')
    path = pathlib.Path(spec.origin).parent / '_meta_registrations.py'
    source = path.read_text()
    for op in ('nms', 'qnms'):
        decorator = f'@torch.library.register_fake("torchvision::{op}")'
        if decorator not in source:
            print(f'{path} has no line {decorator}: this torchvision is not the '
                  'one the workaround was written for', file=sys.stderr)
            return 1
        source = source.replace(decorator, f'@(torch.library.register_fake("torchvision::{op}") {GUARD})')
    path.write_text(source)
    error = import_error()
    if error is not None:
        print(f'torchvision still fails to import after the workaround:\n{error}', file=sys.stderr)
        return 1
    print(f'Patched {path} (pytorch/vision#9085: unguarded register_fake with a CPU-only torch)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
