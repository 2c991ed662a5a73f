"""Every page's Colab notebook runs top to bottom as Colab runs it today.

Colab runs Python 3.13 with the packages of COLAB_VERSIONS preinstalled (its
published package list), but neither this chapter's library d2l_extras nor
d2l: each notebook's first cell installs them. So, for each tab, a fresh
virtual environment gets Python 3.13 (where the machine has it, found on PATH
or through pyenv; else this Python, and the test says so) and exactly those
versions, and every Colab notebook of the book build runs in it, offline, each
in an empty folder of its own. Every install cell of a tab is the same line:
the tab's first notebook, the section, installs d2l_extras (and d2l) into a
venv that could not import them, pointed at a wheel of this checkout instead of
the repository's tag, and the later ones find them installed.

This checks that every cell runs on Colab's versions, not what training
reaches (the book build shows that), so the notebooks run as smoke runs
(D2L_VIT_SMOKE=1: one epoch on at most 128 training and 128 validation
images, a minibatch of each at the pages' usual size). Two kernels run at a
time, the two sections first, then the other notebooks of both tabs longest
first; the JAX notebooks share a compilation cache, as in the book build.
"""
import ast
import concurrent.futures
import configparser
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
import tomllib

import pytest

from d2l_extras.run import reference_runs

from colab_venvs import COLAB_VERSIONS, importable
from conftest import ROOT, copy_sources

sys.path.insert(0, str(ROOT / 'tools'))
import eval_both_tabs  # noqa: E402
from kernel_env import kernel_env  # noqa: E402

BUILD_FOLDER = {'pytorch': 'colab', 'jax': 'colab_jax'}
# What each tab's notebook must install itself, as pip names and module names.
INSTALLS = {'pytorch': {'d2l-extras': 'd2l_extras', 'd2l': 'd2l'},
            'jax': {'d2l-extras': 'd2l_extras'}}
REPOSITORY = re.compile(r'git\+https://[^\s"\']+')
SECTION = 'vision-transformer'
NOTEBOOK_TIMEOUT_S = 1200  # a safety net only: one page on a busy 2-core machine


def code_cells(notebook):
    return [cell for cell in notebook['cells'] if cell['cell_type'] == 'code']


def text(cell):
    return ''.join(''.join(out.get('text', '')) + ''.join(out.get('data', {}).get('text/plain', ''))
                   for out in cell.get('outputs', []))


@dataclasses.dataclass
class Run:
    returncode: int
    seconds: float
    log: str  # nbconvert's output: the failing cell's traceback, if one failed
    notebook: dict  # the executed notebook (also saved in the book's build/colab_run/)


def pinned(tab):
    """The packages of COLAB_VERSIONS[tab] with a version: {name: version}."""
    return dict(requirement.split('==') for requirement in COLAB_VERSIONS[tab] if '==' in requirement)


def prepare(notebook, wheel, tab):
    """The notebook with its install cell pointed at the wheel, and one cell
    more at the end: the versions it ran with and where the library came from."""
    install = code_cells(notebook)[0]
    source = ''.join(install['source'])
    assert REPOSITORY.search(source), f'no repository address in the install cell:\n{source}'
    install['source'] = REPOSITORY.sub(wheel.as_uri(), source)
    notebook['cells'].append({
        'cell_type': 'code', 'metadata': {}, 'outputs': [], 'execution_count': None,
        'source': ('import importlib.metadata, sys, d2l_extras\n'
                   "print('python', sys.version.split()[0])\n"
                   "print('d2l_extras', d2l_extras.__file__)\n"
                   f'for name in {sorted(pinned(tab))!r}:\n'
                   '    print(name, importlib.metadata.version(name))\n')})
    return notebook


def colab_kernel_env(tab, venv, jupyter, data, jax_cache):
    """The environment of the tab's kernels: offline smoke runs in the venv,
    with the book build's settings for the tab (tools/kernel_env.py)."""
    env = {key: value for key, value in os.environ.items()
           if key not in ('PYTHONPATH', 'VIRTUAL_ENV', 'OMP_NUM_THREADS', 'XLA_FLAGS')
           and not key.startswith(('JAX_', 'D2L_VIT_'))}
    env.update(kernel_env(tab, jax_cache, environ={}),
               D2L_VIT_OFFLINE='1', D2L_VIT_QUICK='1', D2L_VIT_SMOKE='1', D2L_VIT_DATA=str(data),
               JUPYTER_PATH=str(jupyter / 'share' / 'jupyter'),
               # `!pip` in a cell is the pip the shell finds first, as on Colab: the venv's.
               PATH=f'{venv / "bin"}{os.pathsep}{os.environ["PATH"]}')
    return env


def run_notebook(book, tab, source, wheel, work, env):
    """One Colab notebook as a new session: in a folder of its own, with the
    executed notebook also saved in the book's build/colab_run/."""
    name = source.stem
    notebook = work / name / f'{name}.ipynb'
    notebook.parent.mkdir()
    notebook.write_text(json.dumps(prepare(json.loads(source.read_text()), wheel, tab)))
    start = time.perf_counter()
    try:
        result = subprocess.run(
            [sys.executable, '-m', 'nbconvert', '--to', 'notebook', '--execute', '--inplace',
             '--ExecutePreprocessor.kernel_name=colab', '--ExecutePreprocessor.timeout=-1',
             str(notebook)], env=env, capture_output=True, text=True, timeout=NOTEBOOK_TIMEOUT_S)
        returncode, log = result.returncode, result.stdout + result.stderr
    except subprocess.TimeoutExpired as error:
        returncode, log = 'timeout', f'no end after {NOTEBOOK_TIMEOUT_S} s: {error.output}'
    executed = json.loads(notebook.read_text())
    saved = book / 'build' / 'colab_run' / BUILD_FOLDER[tab] / 'chapter_vit' / notebook.name
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(executed, indent=1))
    return Run(returncode, time.perf_counter() - start, log, executed)


def notebooks(book, tab):
    """The tab's Colab notebooks with code, the section first."""
    folder = book / 'build' / BUILD_FOLDER[tab] / 'chapter_vit'
    found = [path for path in sorted(folder.glob('*.ipynb'))
             if len(code_cells(json.loads(path.read_text()))) > 1]  # more than the install cell
    return sorted(found, key=lambda path: path.stem != SECTION)


def page_names():
    return sorted(path.stem for path in (ROOT / 'chapter_vit').glob('*.md') if path.stem != 'index')


@dataclasses.dataclass
class ColabRuns:
    python: str  # the version of Python in the venvs
    venvs: dict  # tab: the venv's folder
    preinstalled: dict  # tab: what the venv imported before any install cell ran
    runs: dict  # tab: {page: Run}


@pytest.fixture(scope='module')
def colab_runs(book, colab_venvs, tmp_path_factory):
    """Both tabs' notebooks, each tab in its own Colab-like venv; two at a time."""
    checkout = copy_sources(tmp_path_factory.mktemp('checkout'))
    wheels = tmp_path_factory.mktemp('wheel')
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--quiet', '--no-deps', '--wheel-dir', str(wheels),
                    str(checkout)], check=True, capture_output=True)
    wheel = next(wheels.glob('d2l_extras-*.whl'))
    python, folders = colab_venvs.python, colab_venvs.folders
    data = tmp_path_factory.mktemp('data')
    tabs = list(COLAB_VERSIONS)
    venvs = {tab: colab_venvs.venv(tab) for tab in tabs}
    preinstalled = {tab: importable(venvs[tab], list(INSTALLS[tab].values())) for tab in tabs}
    envs = {tab: colab_kernel_env(tab, venvs[tab], folders[tab] / 'jupyter', data, folders[tab] / 'jax_cache')
            for tab in tabs}
    for tab in tabs:
        (folders[tab] / 'sessions').mkdir()

    def run(task):
        tab, source = task
        return run_notebook(book, tab, source, wheel, folders[tab] / 'sessions', envs[tab])

    # Each tab's section runs first, since its install cell fills the venv
    # that the tab's other notebooks use; then the longest first, by the book
    # build's last times, so that no long notebook runs alone at the end.
    seconds = eval_both_tabs.read_eval_seconds()
    tasks = [(tab, source) for tab in tabs for source in notebooks(book, tab)]
    sections = [task for task in tasks if task[1].stem == SECTION]
    others = sorted((task for task in tasks if task[1].stem != SECTION), reverse=True,
                    key=lambda task: eval_both_tabs.expected_seconds(seconds, task[0],
                                                                     f'chapter_vit/{task[1].stem}'))
    runs = {tab: {} for tab in tabs}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for group in (sections, others):
            for (tab, source), result in zip(group, pool.map(run, group)):
                runs[tab][source.stem] = result
    for tab, tab_runs in runs.items():
        print(f'{tab} on Colab\'s versions:', ', '.join(f'{name} {run.seconds:.0f} s'
                                                       for name, run in tab_runs.items()))
    version = subprocess.run([python, '-c', 'import platform; print(platform.python_version())'],
                             capture_output=True, text=True, check=True).stdout.strip()
    return ColabRuns(version, {tab: str(venvs[tab]) for tab in tabs}, preinstalled, runs)


def versions(run):
    return dict(line.split(' ', 1) for line in text(code_cells(run.notebook)[-1]).strip().splitlines())


@pytest.mark.slow
@pytest.mark.parametrize('tab', sorted(COLAB_VERSIONS))
@pytest.mark.parametrize('page', page_names())
def test_the_pages_colab_notebook_runs_with_colabs_versions(colab_runs, tab, page):
    assert page in colab_runs.runs[tab], f'no Colab notebook of {page} in the {tab} tab'
    run = colab_runs.runs[tab][page]
    assert run.returncode == 0, f'{page} [{tab}] failed on Colab\'s versions:\n{run.log[-6000:]}'
    cells = code_cells(run.notebook)
    assert 'error' not in [out['output_type'] for cell in cells for out in cell.get('outputs', [])]
    assert 'd2l-extras' in text(cells[0]), text(cells[0])[-2000:]
    found = versions(run)
    assert found['python'] == colab_runs.python, found
    for name, version in pinned(tab).items():
        assert found[name] == version, f'{name} {found[name]}, not Colab\'s {version}'
    assert found['d2l_extras'].startswith(colab_runs.venvs[tab]), \
        f'd2l_extras came from {found["d2l_extras"]}, not from the install cell'


@pytest.mark.slow
@pytest.mark.parametrize('tab', sorted(COLAB_VERSIONS))
def test_the_first_install_cell_installs_what_colab_lacks(colab_runs, tab):
    assert colab_runs.preinstalled[tab] == [], \
        f'importable before the install cell: {colab_runs.preinstalled[tab]}'
    install = text(code_cells(colab_runs.runs[tab][SECTION].notebook)[0])
    assert 'Successfully installed' in install, install[-2000:]
    assert all(name in install for name in INSTALLS[tab]), install[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize('tab', sorted(COLAB_VERSIONS))
def test_the_sections_notebook_trains_and_shows_the_reference_run(colab_runs, tab):
    everything = '\n'.join(map(text, code_cells(colab_runs.runs[tab][SECTION].notebook)))
    assert 'Smoke run: 1 of 10 epochs' in everything
    assert 'validation accuracy' in everything
    # The reference runs are package data: the installed package shows them
    if reference_runs.read_record(SECTION, 'vit', 'pytorch'):
        assert 'Reference run (PyTorch, ' in everything


@pytest.mark.slow
def test_the_nnx_block_computes_what_the_linen_block_computes_on_colabs_flax(colab_runs):
    cells = code_cells(colab_runs.runs['jax'][SECTION].notebook)
    equivalence = next(cell for cell in cells if 'replace_by_pure_dict' in ''.join(cell['source']))
    same_tree, difference = ast.literal_eval(text(equivalence).strip())
    assert same_tree and difference < 1e-5, text(equivalence)


def test_the_install_cell_installs_the_tag_of_this_release(book):
    config = configparser.ConfigParser()
    config.read(ROOT / 'config.ini')
    release = config['project']['release']
    version = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']['version']
    assert release == version, f'config.ini says release {release}, pyproject.toml version {version}'
    assert config['colab']['library_tag'] == f'v{release}', \
        f'[colab] library_tag is {config["colab"]["library_tag"]}: set it to v{release}'
    for tab in BUILD_FOLDER:
        # One line per tab, so that the notebooks that find it installed need no own run of it
        lines = {''.join(code_cells(json.loads(path.read_text()))[0]['source']).strip()
                 for path in notebooks(book, tab)}
        assert len(lines) == 1, f'the {tab} notebooks install different things: {lines}'
        install = lines.pop()
        assert f'git+https://github.com/d2l-vit/d2l-vit@v{release}"' in install, install
        assert all(name in install for name in INSTALLS[tab]), install
