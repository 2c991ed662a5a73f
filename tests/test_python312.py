"""The JAX tab runs on Python 3.12 (what Colab runs) without TensorFlow.

d2l 1.0.3's JAX module fails there on both counts; the chapter's must not.
This test installs only the JAX stack, pinned as in constraints.txt, and the
d2l_extras package (a regular, non-editable install, as Colab's install cell
does) into a fresh Python 3.12 environment, and runs every JAX cell of the
section in quick mode on the offline stand-in.
"""
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
from d2lbook import notebook

ROOT = pathlib.Path(__file__).resolve().parents[1]
SECTION = ROOT / 'chapter_vit' / 'vision-transformer.md'
JAX_STACK = ['jax', 'jaxlib', 'flax', 'optax', 'numpy', 'matplotlib', 'scikit-learn', 'ipython']


def python312_candidates():
    yield shutil.which('python3.12')
    pyenv = shutil.which('pyenv')
    if pyenv:  # pyenv installs that are not on PATH
        root = subprocess.run([pyenv, 'root'], capture_output=True, text=True).stdout.strip()
        versions = subprocess.run([pyenv, 'versions', '--bare'], capture_output=True,
                                  text=True).stdout.split()
        for version in versions:
            if version.startswith('3.12'):
                yield os.path.join(root, 'versions', version, 'bin', 'python')


def find_python312():
    for candidate in python312_candidates():
        if candidate and subprocess.run(
                [candidate, '-c', 'import sys; assert sys.version_info[:2] == (3, 12)'],
                capture_output=True).returncode == 0:
            return candidate
    return None


def jax_tab_code():
    """The section's JAX notebook as d2lbook builds it, as one script."""
    nb = notebook.read_markdown(SECTION.read_text())
    nb = notebook.get_tab_notebook(notebook.split_markdown_cell(nb), 'jax', 'pytorch')
    return '\n\n'.join(cell.source for cell in nb.cells if cell.cell_type == 'code')


@pytest.mark.slow
def test_jax_tab_runs_on_python_312_without_tensorflow(tmp_path, jax_cache):
    python = find_python312()
    if python is None:
        pytest.skip('no Python 3.12 interpreter on this machine')
    venv = tmp_path / 'venv'
    subprocess.run([python, '-m', 'venv', str(venv)], check=True)
    pip = [str(venv / 'bin' / 'python'), '-m', 'pip', 'install', '--quiet']
    subprocess.run(pip + JAX_STACK + ['-c', str(ROOT / 'constraints.txt')], check=True)
    subprocess.run(pip + ['--no-deps', str(ROOT)], check=True, cwd=tmp_path)
    script = tmp_path / 'section_jax.py'
    script.write_text(jax_tab_code() + '\n\nimport sys\n'
                      "assert not [m for m in sys.modules if m.startswith('tensorflow')]\n"
                      "print('python', sys.version.split()[0])\n")
    # The cache holds what the book build (when it ran first) compiled for the
    # same section: the run loads it instead of compiling, and computes the same.
    env = dict(os.environ, MPLBACKEND='Agg', PYTHONPATH='',
               JAX_COMPILATION_CACHE_DIR=str(jax_cache))
    result = subprocess.run([str(venv / 'bin' / 'python'), str(script)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert 'python 3.12' in result.stdout
    assert 'Quick mode: 2 of 10 epochs' in result.stdout
    assert 'validation accuracy' in result.stdout
