"""`make pdf` typesets the book, one PDF per framework, from the built notebooks.

Uses the session's book build (tests/conftest.py): d2lbook finds its notebooks
up to date and only converts and typesets them (about 20 seconds for both).
"""
import re
import subprocess

import pytest

from conftest import ROOT, VENV

PDFS = {'pytorch': 'build/pdf/d2l-vit.pdf', 'jax': 'build/pdf_jax/d2l-vit-jax.pdf'}
# Code that appears only in that framework's tab of the section
OWN_CODE = {'pytorch': 'nn.Linear', 'jax': 'nn.Dense'}


@pytest.fixture(scope='module')
def pdf_book(book):
    result = subprocess.run(['make', 'pdf', f'VENV={VENV}', f'NODE_MODULES={ROOT / "node_modules"}'],
                            cwd=book, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    outdated = re.findall(r'(\d+) notebooks are outdated', result.stdout + result.stderr)
    assert outdated and set(outdated) == {'0'}, \
        'make pdf evaluated notebooks again: the book build left them out of date'
    return book


@pytest.mark.parametrize('framework', sorted(PDFS))
def test_each_framework_has_a_pdf_of_the_whole_chapter(pdf_book, framework):
    pdf = pdf_book / PDFS[framework]
    assert pdf.read_bytes()[:5] == b'%PDF-'
    log = (pdf.parent / 'd2l-vit.log').read_text(errors='replace')
    pages = int(re.search(r'Output written on d2l-vit\.pdf \((\d+) pages', log)[1])
    assert pages > 20, f'{pages} pages: the chapter is missing'
    # Every :numref: and :cite: resolved, every figure found
    assert 'undefined' not in log, re.findall(r'.*undefined.*', log)
    missing_files = re.findall(r"File `[^']*' not found", log)
    assert not missing_files, missing_files
    tex = (pdf.parent / 'd2l-vit.tex').read_text()
    for title in ('Transformers for Vision', 'Exercise: Class Token or Mean Pooling?'):
        assert title in tex
    own, other = OWN_CODE[framework], OWN_CODE['jax' if framework == 'pytorch' else 'pytorch']
    code = re.sub(r'\\PYG\{[^}]*\}\{([^}]*)\}', r'\1', tex)  # Pygments markup -> text
    assert own in code and other not in code
