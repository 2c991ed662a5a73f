"""Every test runs offline, in quick mode, with a data folder of its own.

The `book` fixture builds the whole book once per test session; the build
checks (test_book.py), the browser test of the site (test_site_browser.py) and
the Colab-style runs (test_colab_run.py) all use that one build, which takes
CI more than ten minutes; the Colab runs' venvs install while it runs.
"""
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
VENV = pathlib.Path(sys.prefix)  # the environment the tests run in


def pytest_collection_modifyitems(items):
    """Mark the tests that need the build of the whole book (directly or
    through another fixture): `make test-fast` runs all the others."""
    for item in items:
        if 'book' in getattr(item, 'fixturenames', ()):
            item.add_marker(pytest.mark.book)


@pytest.fixture(autouse=True)
def offline_quick_environment(monkeypatch, tmp_path_factory):
    """In-process tests see no system copy of Fashion-MNIST, and so train on
    the small stand-in; the builds of the book (subprocesses) use the real data
    where it is installed. Nothing records reference runs."""
    monkeypatch.setenv('D2L_VIT_OFFLINE', '1')
    monkeypatch.setenv('D2L_VIT_QUICK', '1')
    monkeypatch.setenv('D2L_VIT_DATA', str(tmp_path_factory.mktemp('data')))
    monkeypatch.delenv('D2L_VIT_FASHION_MNIST', raising=False)
    monkeypatch.delenv('D2L_VIT_RECORD', raising=False)
    from d2l_extras.data import fashion_mnist
    monkeypatch.setattr(fashion_mnist, 'SYSTEM_FOLDERS', ())


@pytest.fixture(autouse=True)
def no_figure_outlives_its_test():
    """Close the figures a test drew (d2l's boards draw when models train), so
    that a test counting figures sees only its own."""
    yield
    if 'matplotlib.pyplot' in sys.modules:
        sys.modules['matplotlib.pyplot'].close('all')


@pytest.fixture(scope='session')
def jax_cache(tmp_path_factory):
    """One folder for XLA's persistent compilation cache, shared by the book
    build and the runs of the section's notebooks that follow it: the same
    programs load instead of compiling again (only the time changes)."""
    return tmp_path_factory.mktemp('jax_cache')


def source_files():
    """Tracked files and untracked ones that git does not ignore: what a clone holds."""
    listed = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard'],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [path for path in listed.splitlines() if (ROOT / path).is_file()]


def copy_sources(target):
    for path in source_files():
        (target / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, target / path)
    return target


@pytest.fixture(scope='session')
def colab_venvs(tmp_path_factory):
    """Both tabs' Colab-like venvs (colab_venvs.py), installing in the background."""
    from colab_venvs import COLAB_VERSIONS, ColabVenvs
    venvs = ColabVenvs({tab: tmp_path_factory.mktemp(f'colab_{tab}') for tab in COLAB_VERSIONS})
    yield venvs
    venvs.close()


@pytest.fixture(scope='session')
def book(request, tmp_path_factory, jax_cache):
    """A copy of the sources, built offline and in quick mode by the Makefile's
    `build` target (library, both tabs' notebooks, HTML, Colab notebooks), with
    this environment's venv and node_modules; its make output is in build/make.log."""
    if any('colab_venvs' in item.fixturenames for item in request.session.items):
        request.getfixturevalue('colab_venvs')  # their downloads overlap the build
    copy = copy_sources(tmp_path_factory.mktemp('book'))
    env = dict(os.environ, D2L_VIT_OFFLINE='1', D2L_VIT_QUICK='1', D2L_VIT_RECORD='',
               D2L_VIT_DATA=str(tmp_path_factory.mktemp('data')),
               JAX_COMPILATION_CACHE_DIR=str(jax_cache))
    result = subprocess.run(['make', 'build', f'VENV={VENV}', f'NODE_MODULES={ROOT / "node_modules"}'],
                            cwd=copy, env=env, capture_output=True, text=True, timeout=2400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    (copy / 'build' / 'make.log').write_text(result.stdout + result.stderr)
    return copy
