"""How long the whole book takes to build in quick mode, and where the time goes.

Builds a fresh copy of the sources (so that d2lbook re-evaluates every page)
with the Makefile's `build` target, offline and in quick mode, in the current
environment, and prints the total and each notebook's evaluation time per tab.

    python benchmarks/book_time.py [--json out.json]
    python benchmarks/book_time.py --log build/make.log   # report a build's log

The second form reads the log of a build that already ran (the tests keep
theirs in the book copy's build/make.log) instead of building again.

The Makefile evaluates the notebooks of both tabs two at a time on a
CPU-only machine (tools/eval_both_tabs.py), so the times per notebook overlap
and add up to about twice the total. `--eval-seconds` writes them as the
order that script uses (tools/eval_seconds.json): longest first.
"""
import argparse
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
# d2lbook's log: '=== Finished "d2lbook build rst_all" in 00:00:18' and
# 'Task "[jax] Evaluating ./chapter_vit/x.md" on CPU [1] is finished in 00:02:13'
# (or 'in a chain is finished', from tools/eval_both_tabs.py for notebooks
# that run one after another in one slot)
STAGE = re.compile(r'=== Finished "d2lbook build (\w+)" in (\d+):(\d+):(\d+)')
TASK = re.compile(r'Task "\[(\w+)\] Evaluating \./(\S+)\.md" (?:on \w+ \[\d+\]|in a chain) '
                  r'is finished in (\d+):(\d+):(\d+)')


def seconds(hours, minutes, secs):
    return 3600 * int(hours) + 60 * int(minutes) + int(secs)


def parse(log):
    """Stage times (summed, as d2lbook runs some stages more than once) and,
    per tab, the evaluation time of every notebook."""
    stages, notebooks = {}, {}
    for line in log.splitlines():
        if match := TASK.search(line):
            notebooks.setdefault(match[1], {})[match[2]] = seconds(*match.groups()[2:])
        elif match := STAGE.search(line):
            stages[match[1]] = stages.get(match[1], 0) + seconds(*match.groups()[1:])
    return stages, notebooks


def build_copy(folder):
    listed = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard'],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for path in listed.splitlines():
        if (ROOT / path).is_file():
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / path, folder / path)
    env = dict(os.environ, D2L_VIT_OFFLINE='1', D2L_VIT_QUICK='1',
               D2L_VIT_DATA=str(folder / 'data'))
    start = time.perf_counter()
    result = subprocess.run(['make', 'build', f'VENV={sys.prefix}',
                             f'NODE_MODULES={ROOT / "node_modules"}'], cwd=folder, env=env,
                            capture_output=True, text=True)
    total = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(result.stdout[-3000:] + result.stderr[-3000:])
    return total, result.stdout + result.stderr


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--json', help='also write the times to this file')
    parser.add_argument('--log', help="report this build log's times instead of building")
    parser.add_argument('--eval-seconds', action='store_true',
                        help='write the times per notebook to tools/eval_seconds.json, '
                             'the order of the next evaluation')
    args = parser.parse_args()
    if args.log:
        log = pathlib.Path(args.log).read_text()
        stages, notebooks = parse(log)
        both = re.search(r'=== Both tabs evaluated in (\d+) s', log)
        total = int(both[1]) + stages.get('rst_all', 0) + stages.get('html_all', 0)
        print(f'whole book (evaluation of both tabs, rst, html): {total / 60:.1f} min')
    else:
        with tempfile.TemporaryDirectory() as folder:
            total, log = build_copy(pathlib.Path(folder))
        stages, notebooks = parse(log)
        print(f'whole book, quick mode, offline: {total / 60:.1f} min')
    for stage, secs in stages.items():
        print(f'  d2lbook build {stage}: {secs} s')
    for tab, times in notebooks.items():
        print(f'evaluation, {tab} tab:')
        for page, secs in sorted(times.items(), key=lambda item: -item[1]):
            print(f'  {page}: {secs} s')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(total_s=total, stages_s=stages, notebooks_s=notebooks), f, indent=1)
    if args.eval_seconds:
        path = ROOT / 'tools' / 'eval_seconds.json'
        path.write_text(json.dumps(notebooks, indent=1, sort_keys=True) + '\n')
        print(f'wrote {path.relative_to(ROOT)}')


if __name__ == '__main__':
    main()
