"""Record reference runs: evaluate chosen pages at the full settings.

    python tools/reference_runs.py vision-transformer [PAGE ...] [--tabs pytorch jax] [--script]

Each page's notebook for each tab is cut out of its Markdown source as
`d2lbook build eval` cuts it, and run top to bottom with D2L_VIT_QUICK=0 (10
epochs on all of Fashion-MNIST, or whatever the page's full settings are) and
D2L_VIT_RECORD pointing at the library's package data, d2l_extras/reference_runs/.
Every training cell that calls `compare_with_reference` there writes one
record (and, where the page keeps them, its parameters), atomically. The
evaluated notebooks go to build/reference/<tab>/ for a look at what ran.

With --script the tab's code cells run as one Python program instead, with
no Jupyter kernel and no d2lbook (for a machine that has only the frameworks,
see tools/gpu_reference_runs.py); figures are not kept.

A reference run takes minutes on a GPU and hours on a CPU: on a CPU start it
in the background (nohup ... &) and commit the records when it ends.
"""
import argparse
import os
import pathlib
import re
import runpy
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
RECORDS = ROOT / 'd2l_extras' / 'reference_runs'
TABS = ('pytorch', 'jax')


def page_source(page):
    source = ROOT / 'chapter_vit' / f'{page}.md'
    if not source.exists():
        pages = sorted(p.stem for p in source.parent.glob('*.md'))
        raise SystemExit(f'no page {page!r}: choose from {", ".join(pages)}')
    return source.read_text()


def tab_notebook(page, tab):
    """The notebook of one tab of chapter_vit/<page>.md, as d2lbook cuts it."""
    from d2lbook import library, notebook
    nb = notebook.read_markdown(page_source(page))
    nb = notebook.split_markdown_cell(nb)
    nb = notebook.get_tab_notebook(nb, tab, TABS[0])
    return library.format_code_nb(nb)


CELL = re.compile(r'^```\{\.python \.input\}\n(.*?)^```', re.MULTILINE | re.DOTALL)


def tab_code_cells(page, tab):
    """The code cells of one tab, as d2lbook's notebook of that tab has them:
    `%%tab all` and that tab's cells without their marker; the page's first
    cell (the tab switch of d2lbook) dropped."""
    cells = []
    for code in CELL.findall(page_source(page))[1:]:
        marker, _, rest = code.partition('\n')
        if marker.startswith('%%tab'):
            if marker.split()[1] not in (tab, 'all'):
                continue
            code = rest
        cells.append(code.rstrip('\n'))
    return cells


def run_script(page, tab, folder):
    """Run the tab's code cells as one program in ``folder``; save it there."""
    script = folder / f'{page}.py'
    script.write_text('\n\n'.join(tab_code_cells(page, tab)) + '\n')
    os.environ.setdefault('MPLBACKEND', 'Agg')
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        runpy.run_path(str(script), run_name='__main__')
    finally:
        os.chdir(cwd)
    return script


def run_notebook(page, tab, folder):
    import nbclient
    import nbformat
    nb = tab_notebook(page, tab)
    try:
        nbclient.NotebookClient(nb, timeout=None, kernel_name='python3',
                                resources={'metadata': {'path': str(folder)}}).execute()
    finally:
        target = folder / f'{page}.ipynb'
        partial = target.with_suffix('.ipynb.part')
        partial.write_text(nbformat.writes(nb))
        partial.replace(target)
    return target


def run_page(page, tab, out, data, script=False):
    folder = out / tab
    folder.mkdir(parents=True, exist_ok=True)
    os.environ.update(D2L_VIT_QUICK='0', D2L_VIT_RECORD=str(RECORDS),
                      D2L_VIT_DATA=str(data))
    start = time.monotonic()
    print(f'[{tab}] {page}: running at the full settings', flush=True)
    target = (run_script if script else run_notebook)(page, tab, folder)
    print(f'[{tab}] {page}: done in {(time.monotonic() - start) / 60:.1f} min; '
          f'ran {target}', flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('pages', nargs='+', help='page names, e.g. vision-transformer')
    parser.add_argument('--tabs', nargs='+', choices=TABS, default=list(TABS))
    parser.add_argument('--out', type=pathlib.Path, default=ROOT / 'build' / 'reference')
    parser.add_argument('--data', type=pathlib.Path, default=ROOT / 'build' / 'data',
                        help='the data cache (D2L_VIT_DATA)')
    parser.add_argument('--script', action='store_true',
                        help='run the code as a program: no Jupyter, no d2lbook')
    args = parser.parse_args()
    failed = []
    for page in args.pages:
        for tab in args.tabs:
            try:
                run_page(page, tab, args.out.resolve(), args.data.resolve(), args.script)
            except Exception as error:  # the next page still runs
                print(f'[{tab}] {page} failed: {type(error).__name__}: {error}',
                      file=sys.stderr)
                failed.append(f'{tab}/{page}')
    if failed:
        sys.exit(f'failed: {", ".join(failed)}')


if __name__ == '__main__':
    main()
