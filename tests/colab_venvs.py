"""Colab-like virtual environments, one per tab, for test_colab_run.py: the
Python and the package versions that Colab preinstalls, and none of the
chapter's libraries. Installing them is mostly downloading (PyTorch's CUDA
wheels), so conftest.py starts them before the book build, whose kernels keep
the cores busy meanwhile."""
import concurrent.futures
import os
import shutil
import subprocess
import sys
import warnings

COLAB_PYTHON = (3, 13)
# What Colab preinstalls that the notebooks use (August 2026); d2l needs
# pandas and requests, and the PyTorch fine-tuning page timm.
COMMON = ['numpy==2.1.3', 'scikit-learn==1.6.1', 'matplotlib', 'pillow', 'ipykernel']
COLAB_VERSIONS = {
    'pytorch': COMMON + ['torch==2.11.0', 'torchvision==0.26.0', 'timm==1.0.28', 'safetensors',
                         'pandas', 'requests', 'scipy'],
    'jax': COMMON + ['jax==0.7.2', 'jaxlib==0.7.2', 'flax==0.11.2', 'optax==0.2.8'],
}


def python_candidates():
    major, minor = COLAB_PYTHON
    yield shutil.which(f'python{major}.{minor}')
    pyenv = shutil.which('pyenv')
    if pyenv:  # pyenv installs that are not on PATH
        root = subprocess.run([pyenv, 'root'], capture_output=True, text=True).stdout.strip()
        versions = subprocess.run([pyenv, 'versions', '--bare'], capture_output=True,
                                  text=True).stdout.split()
        for version in versions:
            if version.startswith(f'{major}.{minor}.'):
                yield os.path.join(root, 'versions', version, 'bin', 'python')


def colab_python():
    probe = f'import sys; assert sys.version_info[:2] == {COLAB_PYTHON}'
    for candidate in python_candidates():
        if candidate and subprocess.run([candidate, '-c', probe], capture_output=True).returncode == 0:
            return candidate
    warnings.warn(f'no Python {COLAB_PYTHON[0]}.{COLAB_PYTHON[1]} on this machine: the Colab '
                  f'notebooks run on Python {sys.version.split()[0]} with Colab\'s packages')
    return sys._base_executable


def colab_venv(python, folder, tab):
    """A fresh venv with Colab's versions of what the tab uses, and a Jupyter
    kernel that is this venv's IPython, as Colab's is its own."""
    venv = folder / 'venv'
    subprocess.run([python, '-m', 'venv', str(venv)], check=True)
    pip = [str(venv / 'bin' / 'python'), '-m', 'pip', 'install', '--quiet', '--disable-pip-version-check']
    result = subprocess.run(pip + COLAB_VERSIONS[tab], capture_output=True, text=True)
    assert result.returncode == 0, f'Colab\'s {tab} versions do not install:\n{result.stderr[-3000:]}'
    subprocess.run([str(venv / 'bin' / 'python'), '-m', 'ipykernel', 'install', '--prefix',
                    str(folder / 'jupyter'), '--name', 'colab'], check=True, capture_output=True)
    return venv


def importable(venv, modules):
    """Which of `modules` the venv imports, from a folder outside the checkout."""
    probe = f'import importlib.util; print(*[m for m in {modules!r} if importlib.util.find_spec(m)])'
    result = subprocess.run([str(venv / 'bin' / 'python'), '-c', probe], cwd=venv,
                            capture_output=True, text=True, check=True)
    return result.stdout.split()


class ColabVenvs:
    """Each tab's venv in its folder of `folders` ({tab: folder}), installing
    in the background from the moment this is made."""

    def __init__(self, folders):
        self.python = colab_python()
        self.folders = folders
        self._pool = concurrent.futures.ThreadPoolExecutor(len(folders))
        self._venvs = {tab: self._pool.submit(colab_venv, self.python, folder, tab)
                       for tab, folder in folders.items()}

    def venv(self, tab):
        """The tab's venv, once installed; raises what installing it raised."""
        return self._venvs[tab].result()

    def close(self):
        self._pool.shutdown(wait=True, cancel_futures=True)
