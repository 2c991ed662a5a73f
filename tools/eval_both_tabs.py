"""Evaluate the notebooks of both tabs with one queue, longest first.

`d2lbook build eval [--tab jax]` evaluates one tab, two notebooks at a time, in
the order of a Python set, which changes from run to run. With both tabs
sharing the two slots of a 2-core machine, that order decided whether a
3-minute JAX notebook started last and ran alone at the end (in one build we
timed, one slot idled for 103 s). Longest processing time first is the
classic remedy: this script builds d2lbook's evaluation tasks for every tab,
exactly as `d2lbook build eval` would, and runs them all through one d2lbook
scheduler, ordered by how long each took when it was last measured
(`EVAL_SECONDS`, written by `benchmarks/book_time.py --eval-seconds`). A
notebook with no measurement goes first, as if it were the longest.

    python tools/eval_both_tabs.py [--jax-cache FOLDER] [--env TAB NAME=VALUE ...]

A notebook that loads a file another notebook of its tab writes runs right
after that notebook, in the same slot (`RUNS_AFTER`).

Each tab's kernels get the environment of tools/kernel_env.py (half of the
cores for PyTorch; for JAX, a compilation cache in `--jax-cache` and XLA's -O2
on a CPU); `--env` sets one more variable for the kernels of one tab only.
Exits non-zero, naming the notebooks, if any notebook fails.
"""
import argparse
import datetime
import json
import logging
import multiprocessing
import os
import pathlib
import sys

from d2lbook import build, config as d2lbook_config, resource, utils

from kernel_env import kernel_env

EVAL_SECONDS = pathlib.Path(__file__).with_name('eval_seconds.json')
# what-vit-learns loads the parameters that the section trained and saved
# (vit.params) instead of training the same model again.
RUNS_AFTER = {'chapter_vit/what-vit-learns': 'chapter_vit/vision-transformer'}


class TaskCollector:
    """Stands in for d2lbook's scheduler inside `Builder.eval`: it keeps the
    tasks instead of running them, so that every tab's go into one queue."""
    # Builder.eval asserts that no task failed; none has run yet. Immutable,
    # so that no collector can change what another reports.
    failed_tasks, error_message = (), ''

    def __init__(self):
        self.tasks = []

    def add(self, num_cpus, num_gpus, target, args, description=''):
        self.tasks.append((num_cpus, num_gpus, target, args, description))

    def run(self):
        pass


def tab_tasks(tab):
    """The evaluation tasks of one tab's out-of-date notebooks: d2lbook's own
    eval finds them, cuts out the tab and prepares the folders; only its
    scheduler is swapped for the collector."""
    collector = TaskCollector()
    resource.Scheduler = lambda num_cpu_workers, num_gpu_workers: collector
    build.Builder(d2lbook_config.Config(tab=tab)).eval()
    return collector.tasks


def run_with_env(env, target, *args):
    os.environ.update(env)  # inherited by the kernel that this task starts
    return target(*args)


def run_one_after_another(tab, tasks):
    """Run d2lbook's tasks (target, args, description) in order, logging each
    one's time as d2lbook does; raise the first failure once all have run."""
    failure = None
    for target, args, description in tasks:
        start = datetime.datetime.now()
        try:
            target(*args)
        except Exception as error:  # d2lbook reports it; the next still runs
            failure = failure or error
        logging.info(f'Task "[{tab}] {description}" in a chain is finished in '
                     f'{utils.get_time_diff(start, datetime.datetime.now())}')
    if failure is not None:
        raise failure


def chains(tasks):
    """One tab's tasks as lists to run one after another: a notebook of
    RUNS_AFTER joins the list of the notebook it needs, when both are due."""
    by_name = {notebook_name(task[-1]): [task] for task in tasks}
    for later, earlier in RUNS_AFTER.items():
        if later in by_name and earlier in by_name:
            by_name[earlier] += by_name.pop(later)
    return list(by_name.values())


def notebook_name(description):
    """'chapter_vit/swin' from 'Evaluating ./chapter_vit/swin.md'."""
    source = description.split('Evaluating ', 1)[-1]
    return os.path.normpath(os.path.splitext(source)[0])


def read_eval_seconds():
    """{tab: {notebook: seconds}} as last measured (EVAL_SECONDS), or {}."""
    return json.loads(EVAL_SECONDS.read_text()) if EVAL_SECONDS.exists() else {}


def expected_seconds(seconds, tab, notebook):
    """How long `notebook` ('chapter_vit/swin') took in `seconds`; one never
    measured counts as the longest."""
    return seconds.get(tab, {}).get(notebook, float('inf'))


def parse_env(parser, tabs, assignments, jax_cache):
    env = {tab: kernel_env(tab, jax_cache) for tab in tabs}
    for tab, assignment in assignments:
        if tab not in env or '=' not in assignment:
            parser.error(f'--env {tab} {assignment}: expected a tab of {tabs} and NAME=VALUE')
        name, value = assignment.split('=', 1)
        env[tab][name] = value
    return env


def main():
    logging.basicConfig(format='[eval_both_tabs] %(levelname)-6s %(message)s',
                        level=logging.INFO)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--env', nargs=2, action='append', default=[],
                        metavar=('TAB', 'NAME=VALUE'))
    parser.add_argument('--jax-cache', type=pathlib.Path, default=pathlib.Path('build', 'jax_cache'),
                        help='the JAX kernels\' compilation cache, unless JAX_COMPILATION_CACHE_DIR '
                             'names one (default: build/jax_cache)')
    args = parser.parse_args()
    tabs = d2lbook_config.Config().tabs
    env = parse_env(parser, tabs, args.env, args.jax_cache.resolve())
    seconds = read_eval_seconds()

    # Each tab's tasks are made in a process of its own, at the same time:
    # reading and cutting the notebooks takes d2lbook about 15 s per tab.
    with multiprocessing.get_context('fork').Pool(len(tabs)) as pool:
        queue = [(tab, chain) for tab, tasks in zip(tabs, pool.map(tab_tasks, tabs, chunksize=1))
                 for chain in chains(tasks)]

    def chain_seconds(item):
        tab, chain = item
        return sum(expected_seconds(seconds, tab, notebook_name(task[-1])) for task in chain)

    queue.sort(key=chain_seconds, reverse=True)
    gpus = resource.get_available_gpus()
    scheduler = resource.Scheduler(len(gpus) if gpus else 2, len(gpus))
    for tab, chain in queue:
        if len(chain) == 1:
            num_cpus, num_gpus, target, task_args, description = chain[0]
            scheduler.add(num_cpus, num_gpus, run_with_env, (env[tab], target, *task_args),
                          f'[{tab}] {description}')
        else:
            scheduler.add(max(task[0] for task in chain), max(task[1] for task in chain),
                          run_with_env, (env[tab], run_one_after_another, tab,
                                         [task[2:] for task in chain]),
                          f'[{tab}] ' + ', then '.join(task[-1] for task in chain))
    scheduler.run()
    if scheduler.failed_tasks:
        logging.error(scheduler.error_message)
        sys.exit(1)


if __name__ == '__main__':
    main()
