"""Record reference runs: evaluate chosen pages at the full settings.

    python tools/reference_runs.py vision-transformer [PAGE ...] [--tabs pytorch jax]

Each page's notebook for each tab is cut out of its Markdown source as
`d2lbook build eval` cuts it, and run top to bottom with D2L_VIT_QUICK=0 (10
epochs on all of Fashion-MNIST, or whatever the page's full settings are) and
D2L_VIT_RECORD pointing at the library's package data, d2l_extras/reference_runs/.
Every training cell that calls `compare_with_reference` there writes one
record (and, where the page keeps them, its parameters), atomically. The
evaluated notebooks go to build/reference/<tab>/ for a look at what ran.

A reference run takes minutes on a GPU and hours on a CPU: on a CPU start it
in the background (nohup ... &) and commit the records when it ends.
"""
import argparse
import os
import pathlib
import sys
import time

import nbclient
import nbformat
from d2lbook import library, notebook

ROOT = pathlib.Path(__file__).resolve().parents[1]
RECORDS = ROOT / 'd2l_extras' / 'reference_runs'
TABS = ('pytorch', 'jax')


def tab_notebook(page, tab):
    """The notebook of one tab of chapter_vit/<page>.md, as d2lbook cuts it."""
    source = ROOT / 'chapter_vit' / f'{page}.md'
    if not source.exists():
        pages = sorted(p.stem for p in source.parent.glob('*.md'))
        raise SystemExit(f'no page {page!r}: choose from {", ".join(pages)}')
    nb = notebook.read_markdown(source.read_text())
    nb = notebook.split_markdown_cell(nb)
    nb = notebook.get_tab_notebook(nb, tab, TABS[0])
    return library.format_code_nb(nb)


def run_page(page, tab, out, data):
    folder = out / tab
    folder.mkdir(parents=True, exist_ok=True)
    nb = tab_notebook(page, tab)
    os.environ.update(D2L_VIT_QUICK='0', D2L_VIT_RECORD=str(RECORDS),
                      D2L_VIT_DATA=str(data))
    start = time.monotonic()
    print(f'[{tab}] {page}: running at the full settings', flush=True)
    try:
        nbclient.NotebookClient(nb, timeout=None, kernel_name='python3',
                                resources={'metadata': {'path': str(folder)}}).execute()
    finally:
        target = folder / f'{page}.ipynb'
        partial = target.with_suffix('.ipynb.part')
        partial.write_text(nbformat.writes(nb))
        partial.replace(target)
    print(f'[{tab}] {page}: done in {(time.monotonic() - start) / 60:.1f} min; '
          f'notebook in {target}', flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('pages', nargs='+', help='page names, e.g. vision-transformer')
    parser.add_argument('--tabs', nargs='+', choices=TABS, default=list(TABS))
    parser.add_argument('--out', type=pathlib.Path, default=ROOT / 'build' / 'reference')
    parser.add_argument('--data', type=pathlib.Path, default=ROOT / 'build' / 'data',
                        help='the data cache (D2L_VIT_DATA)')
    args = parser.parse_args()
    failed = []
    for page in args.pages:
        for tab in args.tabs:
            try:
                run_page(page, tab, args.out.resolve(), args.data.resolve())
            except nbclient.exceptions.CellExecutionError as error:
                print(f'[{tab}] {page} failed:\n{error}', file=sys.stderr)
                failed.append(f'{tab}/{page}')
    if failed:
        sys.exit(f'failed: {", ".join(failed)}')


if __name__ == '__main__':
    main()
