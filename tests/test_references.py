"""Every reference the text cites is in vit.bib, and vit.bib parses.

The book build finds the same mistakes, but only after evaluating every
notebook; this check takes a second.
"""
import pathlib
import re

from pybtex.database import parse_file

ROOT = pathlib.Path(__file__).resolve().parents[1]


def cited_keys():
    for page in [ROOT / 'index.md', *ROOT.glob('chapter_*/*.md')]:  # the book's pages
        for group in re.findall(r':cite:`([^`]+)`', page.read_text()):
            for key in group.split(','):
                yield page.relative_to(ROOT), key.strip()


def test_every_cited_key_is_in_the_bibliography():
    entries = parse_file(str(ROOT / 'vit.bib')).entries
    missing = [f'{page}: {key}' for page, key in cited_keys() if key not in entries]
    assert not missing, f'cited but not in vit.bib: {missing}'
    assert len(set(key for _, key in cited_keys())) >= 10  # the scan found the citations
