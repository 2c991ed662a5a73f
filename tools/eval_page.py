"""Evaluate one or more pages' notebooks, in quick mode, without building the book.

    python tools/eval_page.py masked-autoencoder [PAGE ...] [--tabs pytorch jax]

For writing a page: each tab's notebook is cut out of chapter_vit/<page>.md as
`d2lbook build eval` cuts it and run top to bottom in a Jupyter kernel, in
quick mode (D2L_VIT_QUICK=1, unless it is set), with the same environment as
`make eval` gives the kernels (tools/kernel_env.py). The evaluated notebooks go to
build/pages/<tab>/<page>.ipynb; the time each took is printed. Run `make lib`
first when the page's saved code changed.
"""
import argparse
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import reference_runs  # noqa: E402  (tools/reference_runs.py)
from kernel_env import kernel_env  # noqa: E402

ROOT = reference_runs.ROOT


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('pages', nargs='+', help='page names, e.g. position-embeddings')
    parser.add_argument('--tabs', nargs='+', choices=reference_runs.TABS,
                        default=list(reference_runs.TABS))
    parser.add_argument('--out', type=pathlib.Path, default=ROOT / 'build' / 'pages')
    args = parser.parse_args()
    os.environ.setdefault('D2L_VIT_QUICK', '1')
    envs = {tab: kernel_env(tab, ROOT / 'build' / 'jax_cache') for tab in args.tabs}
    from d2lbook import resource
    failed = []
    for page in args.pages:
        for tab in args.tabs:
            # d2lbook's build gives a GPU to a notebook whose code names one
            # (`try_gpu()`, ...) and fails on a machine without any
            if (resource.get_notebook_gpus(reference_runs.tab_notebook(page, tab), 2)
                    and not resource.get_available_gpus()):
                print(f'[{tab}] {page}: d2lbook would wait for a GPU for it (its code calls '
                      'try_gpu() or similar): move tensors with the model\'s device instead',
                      file=sys.stderr)
                failed.append(f'{tab}/{page}')
                continue
            os.environ.update(envs[tab])  # inherited by the kernel
            folder = args.out.resolve() / tab
            folder.mkdir(parents=True, exist_ok=True)
            start = time.monotonic()
            try:
                target = reference_runs.run_notebook(page, tab, folder)
            except Exception as error:  # the next page still runs
                print(f'[{tab}] {page} failed: {type(error).__name__}: {error}',
                      file=sys.stderr)
                failed.append(f'{tab}/{page}')
                continue
            print(f'[{tab}] {page}: {time.monotonic() - start:.0f} s, {target}', flush=True)
    if failed:
        sys.exit(f'failed: {", ".join(failed)} (the partly evaluated notebooks are in {args.out})')


if __name__ == '__main__':
    main()
