"""The Colab notebooks run top to bottom as Colab would run them.

Colab comes with torch, jax, flax, optax, numpy and matplotlib, but not with
this chapter's library d2l_extras, nor with d2l: the notebook's first cell must
install them. So the section's generated Colab notebook of each framework (from
the `book` fixture) runs in a fresh virtual environment that sees this
environment's packages (standing in for Colab's, and sparing CI a second
install) except d2l and d2l_extras, with its install cell pointed at a copy of
this checkout instead of the repository address, offline and in quick mode.
"""
import dataclasses
import json
import os
import pathlib
import re
import subprocess
import sys
import sysconfig

import pytest

from d2l_extras.run import reference_runs

from conftest import copy_sources

SECTION = 'chapter_vit/vision-transformer'
# What each framework's notebook must install itself, by module name.
INSTALLS = {'colab': ['d2l_extras', 'd2l'], 'colab_jax': ['d2l_extras']}
COLAB_HAS = 'torch, jax, flax, optax, numpy, matplotlib'
REPOSITORY = re.compile(r'git\+https://[^\s"\']+')
# Left out of the fresh venv's view of this one: the project's d2l and its
# editable d2l_extras (and the .pth files, which put such things on the path).
NOT_PREINSTALLED = re.compile(r'^(d2l|d2l_extras)([-.].*)?$|^__editable__|\.pth$')
NOTEBOOK_TIMEOUT_S = 1200  # a safety net only: both notebooks at once on a busy 2-core machine


@dataclasses.dataclass
class Run:
    venv: pathlib.Path
    preinstalled: list  # what the fresh venv could import of INSTALLS before the install cell
    returncode: int
    log: str  # nbconvert's output: the failing cell's traceback, if one failed
    notebook: dict  # the executed notebook (saved in the book's build/colab_run/)


def colab_like_venv(folder):
    """A fresh venv whose site-packages is empty but for a .pth file naming a
    folder of links to this environment's packages, less NOT_PREINSTALLED."""
    site_packages = pathlib.Path(sysconfig.get_paths()['purelib'])
    preinstalled = folder / 'preinstalled'
    preinstalled.mkdir()
    for entry in sorted(site_packages.iterdir()):
        if not NOT_PREINSTALLED.search(entry.name):
            (preinstalled / entry.name).symlink_to(entry)
    venv = folder / 'venv'
    # From the base interpreter: a venv made by this venv's python would still
    # see this venv's packages, d2l included.
    subprocess.run([sys._base_executable, '-m', 'venv', str(venv)], check=True)
    python = str(venv / 'bin' / 'python')
    own = subprocess.run([python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                         capture_output=True, text=True, check=True).stdout.strip()
    (pathlib.Path(own) / 'colab_preinstalled.pth').write_text(f'{preinstalled}\n')
    # A Jupyter kernel that is this venv's IPython, as Colab's is its own.
    subprocess.run([python, '-m', 'ipykernel', 'install', '--prefix', str(folder / 'jupyter'),
                    '--name', 'colab'], check=True, capture_output=True)
    return venv


def importable(venv, modules):
    probe = (f'import {COLAB_HAS}\n'
             'import importlib.util\n'
             f'print(*[m for m in {modules!r} if importlib.util.find_spec(m)])')
    # Not from the checkout: `python -c` puts its working directory on the path,
    # and the checkout's own d2l_extras/ would look preinstalled
    result = subprocess.run([str(venv / 'bin' / 'python'), '-c', probe], cwd=venv,
                            capture_output=True, text=True)
    assert result.returncode == 0, f'the fresh venv lacks what Colab has:\n{result.stderr[-2000:]}'
    return result.stdout.split()


def colab_notebook(book, folder, checkout, imports):
    nb = json.loads((book / 'build' / folder / f'{SECTION}.ipynb').read_text())
    install = next(cell for cell in nb['cells'] if cell['cell_type'] == 'code')
    source = ''.join(install['source'])
    assert REPOSITORY.search(source), f'no repository address in the install cell of {folder}:\n{source}'
    install['source'] = REPOSITORY.sub(checkout.as_uri(), source)
    # One cell more at the end: where the installed modules came from.
    nb['cells'].append({'cell_type': 'code', 'metadata': {}, 'outputs': [], 'execution_count': None,
                        'source': 'import importlib\n' + ''.join(
                            f'print({m!r}, importlib.import_module({m!r}).__file__)\n' for m in imports)})
    return nb


@pytest.fixture(scope='module')
def colab_runs(book, tmp_path_factory, jax_cache):
    """Both notebooks, run at the same time (one kernel each), as nbconvert runs
    them: the two runs overlap their installs and share CI's two cores."""
    prepared = {}
    for folder, imports in INSTALLS.items():
        # One copy each, as each Colab clones its own: pip builds the package
        # inside the source folder, and two builds there at once can lose files
        checkout = copy_sources(tmp_path_factory.mktemp(f'checkout_{folder}'))
        work = tmp_path_factory.mktemp(folder)
        venv = colab_like_venv(work)
        notebook = work / 'run' / 'notebook.ipynb'
        notebook.parent.mkdir()
        notebook.write_text(json.dumps(colab_notebook(book, folder, checkout, imports)))
        env = {key: value for key, value in os.environ.items() if key not in ('PYTHONPATH', 'VIRTUAL_ENV')}
        env.update(D2L_VIT_OFFLINE='1', D2L_VIT_QUICK='1', D2L_VIT_DATA=str(work / 'data'),
                   JUPYTER_PATH=str(work / 'jupyter' / 'share' / 'jupyter'),
                   # `!pip` in a cell is the pip the shell finds first, as on Colab: the venv's.
                   PATH=f'{venv / "bin"}{os.pathsep}{os.environ["PATH"]}',
                   # The book build compiled the section's JAX steps already.
                   JAX_COMPILATION_CACHE_DIR=str(jax_cache))
        prepared[folder] = (venv, importable(venv, imports), notebook, env)
    processes = {}
    try:
        for folder, (_, _, notebook, env) in prepared.items():
            processes[folder] = subprocess.Popen(
                [sys.executable, '-m', 'nbconvert', '--to', 'notebook', '--execute', '--inplace',
                 '--ExecutePreprocessor.kernel_name=colab', '--ExecutePreprocessor.timeout=-1', str(notebook)],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        logs = {folder: process.communicate(timeout=NOTEBOOK_TIMEOUT_S)[0] for folder, process in processes.items()}
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
    runs = {}
    for folder, (venv, preinstalled, notebook, _) in prepared.items():
        executed = json.loads(notebook.read_text())
        saved = book / 'build' / 'colab_run' / folder / f'{SECTION}.ipynb'
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(executed, indent=1))
        runs[folder] = Run(venv, preinstalled, processes[folder].returncode, logs[folder], executed)
    return runs


def text(cell):
    return ''.join(''.join(out.get('text', '')) + ''.join(out.get('data', {}).get('text/plain', ''))
                   for out in cell.get('outputs', []))


@pytest.mark.parametrize('folder', sorted(INSTALLS))
def test_the_colab_notebook_installs_what_it_needs_and_runs(colab_runs, folder):
    run = colab_runs[folder]
    assert run.preinstalled == [], f'importable before the install cell: {run.preinstalled}'
    assert run.returncode == 0, f'the {folder} notebook failed:\n{run.log[-6000:]}'
    cells = [cell for cell in run.notebook['cells'] if cell['cell_type'] == 'code']
    install = text(cells[0])
    assert 'Successfully installed' in install and 'd2l-extras' in install, install[-2000:]
    everything = '\n'.join(map(text, cells))
    assert 'error' not in [out['output_type'] for cell in cells for out in cell.get('outputs', [])]
    assert 'Quick mode: 2 of 10 epochs' in everything
    assert 'validation accuracy' in everything
    # The reference runs are package data: the installed package shows them
    if reference_runs.read_record('vision-transformer', 'vit', 'pytorch'):
        assert 'Reference run (PyTorch, ' in everything
    where = dict(line.split(' ', 1) for line in text(cells[-1]).strip().splitlines())
    assert sorted(where) == sorted(INSTALLS[folder])
    for module, path in where.items():
        assert path.startswith(str(run.venv)), f'{module} came from {path}, not from the install cell'
