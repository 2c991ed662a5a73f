"""Reference runs: the full settings of a page, recorded once, shown beside
each build's own (quick) run.

A record is one JSON file per training run, ``<page>--<name>--<framework>.json``
in the package folder ``d2l_extras/reference_runs/`` (so that a Colab notebook,
which installs the package, has them too). It holds the page, the framework,
the model and training settings, the dataset's name and sizes, the history per
epoch (training loss, validation loss, validation accuracy, as the progress
board plots them), the final validation accuracy, the wall time, the hardware,
the library versions and the project's commit. A page's run may also keep its
trained parameters beside its record (``.npz``, float16, in Flax's names and
layouts, readable by both tabs without the other framework).

Records are written only when ``D2L_VIT_RECORD`` names a folder and the run
uses the full settings; ``tools/reference_runs.py`` runs pages that way.
"""
import datetime
import json
import os
import pathlib
import platform
import re
import subprocess
import sys
import time

import numpy as np

from d2l_extras.run.saved_params import write_atomically

RECORD_ENV_VAR = 'D2L_VIT_RECORD'
FOLDER = pathlib.Path(__file__).parents[1] / 'reference_runs'
FORMAT = 1
HISTORY_KEYS = ('train_loss', 'val_loss', 'val_acc')
REQUIRED = {'format': int, 'page': str, 'name': str, 'framework': str,
            'model': dict, 'training': dict, 'dataset': dict, 'history': dict,
            'final_val_acc': float, 'wall_time_s': float, 'hardware': dict,
            'versions': dict, 'commit': str, 'recorded': str}
FRAMEWORKS = ('pytorch', 'jax')


class RecordError(ValueError):
    """A reference record that is malformed; the message names the file."""


def record_path(page, name, framework, folder=None):
    if framework not in FRAMEWORKS:
        raise ValueError(f'framework={framework!r}: use one of {FRAMEWORKS}')
    slug = re.sub(r'[^A-Za-z0-9_.]+', '-', name).strip('-')  # '+ label smoothing'
    return pathlib.Path(folder or FOLDER) / f'{page}--{slug}--{framework}.json'


def parameters_path(page, name, framework, folder=None):
    return record_path(page, name, framework, folder).with_suffix('.npz')


# The wall time of a run counts from the latest of: this module's import,
# run_size() choosing the run, the previous record.
_clock = {'start': time.monotonic()}


def start_clock():
    _clock['start'] = time.monotonic()


def history_from_board(board):
    """Per-epoch history from a d2l ProgressBoard: the validation points are
    one per epoch; the training loss is the mean of the epoch's points."""
    data = getattr(board, 'data', {})
    missing = [key for key in HISTORY_KEYS if key not in data]
    if missing:
        raise ValueError(f'the progress board has no {missing}: record a run '
                         'right after trainer.fit, with validation data')
    # Points are (x, y): d2l's Point namedtuples in PyTorch, tuples in JAX
    val_loss = [float(y) for _, y in data['val_loss']]
    epochs = [int(round(x)) for x, _ in data['val_loss']]
    train = {}
    for x, y in data['train_loss']:  # x in [epoch - 1, epoch)
        train.setdefault(int(np.floor(x + 1e-9)) + 1, []).append(float(y))
    return {'epoch': epochs, 'train_loss': [float(np.mean(train[e])) for e in epochs],
            'val_loss': val_loss, 'val_acc': [float(y) for _, y in data['val_acc']]}


def hardware():
    try:
        gpu = subprocess.run(['nvidia-smi', '--query-gpu=name', '--format=csv,noheader'],
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        gpu = ''
    cpu = platform.processor() or platform.machine()
    try:
        for line in open('/proc/cpuinfo'):
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    return {'cpu': cpu, 'cores': cores, 'gpu': gpu or None}


def versions(framework):
    from importlib import metadata
    names = ['numpy', 'd2l'] + (['torch'] if framework == 'pytorch'
                                else ['jax', 'jaxlib', 'flax', 'optax'])
    found = {'python': platform.python_version()}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def commit():
    """The project's commit, with '-dirty' when its tracked files differ."""
    here = pathlib.Path(__file__).parent
    try:
        head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=here, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'],
                               cwd=here, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return 'unknown'
    return head + ('-dirty' if dirty.strip() else '')


# A recording process takes the commit when it imports this module, as it
# starts: the code that runs, not whatever is checked out when the run ends
# hours later.
_started = {'commit': commit() if os.environ.get(RECORD_ENV_VAR, '').strip() else None}


def make_record(page, name, framework, model_hparams, data, run, history,
                timed_with=(), **training):
    """A record of one finished run. ``data`` is the chapter's data module
    (its hparams and arrays give the dataset), ``run`` the RunSize;
    ``timed_with`` names the other runs that its wall time includes (those
    trained in the same cell)."""
    arrays = data.arrays
    hparams = {k: v for k, v in data.hparams.items() if k != 'root'}
    return {
        'format': FORMAT, 'page': page, 'name': name, 'framework': framework,
        'model': json.loads(json.dumps(model_hparams, default=str)),
        'training': json.loads(json.dumps(
            {'max_epochs': run.max_epochs, 'quick': run.quick, **hparams, **training},
            default=str)),
        'dataset': {'name': arrays.name, 'num_train': len(arrays.train_labels),
                    'num_val': len(arrays.val_labels)},
        'history': history,
        'final_val_acc': float(history['val_acc'][-1]),
        'wall_time_s': round(time.monotonic() - _clock['start'], 1),
        **({'timed_with': sorted(timed_with)} if timed_with else {}),
        'hardware': hardware(), 'versions': versions(framework),
        'commit': _started['commit'] or commit(),
        'recorded': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
    }


def validate(record, source='record'):
    """Raise RecordError, naming ``source``, unless ``record`` is well formed."""
    if not isinstance(record, dict):
        raise RecordError(f'{source}: a record is a JSON object, not {type(record).__name__}')
    for key, kind in REQUIRED.items():
        if key not in record:
            raise RecordError(f'{source}: no {key!r}; record the run again with '
                              'tools/reference_runs.py')
        value = record[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind):
            raise RecordError(f'{source}: {key!r} should be a {kind.__name__}, '
                              f'not {type(value).__name__}')
    if record['format'] != FORMAT:
        raise RecordError(f'{source}: format {record["format"]}, this library reads {FORMAT}')
    if record['framework'] not in FRAMEWORKS:
        raise RecordError(f'{source}: framework {record["framework"]!r} is neither of {FRAMEWORKS}')
    history = record['history']
    lengths = {key: len(history.get(key, ())) for key in ('epoch',) + HISTORY_KEYS}
    if len(set(lengths.values())) != 1 or not lengths['epoch']:
        raise RecordError(f'{source}: the history needs one value per epoch in each of '
                          f'{sorted(lengths)}; it has {lengths}')
    if not all(np.isfinite(history[key]).all() for key in HISTORY_KEYS):
        raise RecordError(f'{source}: the history holds a value that is not finite')
    if not 0 <= record['final_val_acc'] <= 1:
        raise RecordError(f'{source}: final_val_acc {record["final_val_acc"]} is not in [0, 1]')
    return record


def write_record(record, folder):
    """Validate ``record`` and write it atomically into ``folder``; return the path."""
    validate(record)
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = record_path(record['page'], record['name'], record['framework'], folder)
    text = json.dumps(record, indent=1, sort_keys=True) + '\n'
    write_atomically(path, lambda file: file.write(text.encode()))
    return path


def read_record(page, name, framework, folder=None):
    """The validated record, or None when none is recorded. A record that
    exists but is damaged raises RecordError naming the file."""
    path = record_path(page, name, framework, folder)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise RecordError(f'{path} is not valid JSON ({error}); delete it and record the '
                          'run again with tools/reference_runs.py') from error
    return validate(record, str(path))


def find_record(page, name, framework, folder=None):
    """This framework's record, else the other framework's, else None."""
    other = FRAMEWORKS[1 - FRAMEWORKS.index(framework)]
    return read_record(page, name, framework, folder) or read_record(page, name, other, folder)


def describe(record):
    """One line saying what the run was and where it ran."""
    data, hw = record['dataset'], record['hardware']
    where = hw['gpu'] or f'{hw["cores"]} CPU cores ({hw["cpu"]})'
    framework = {'pytorch': 'PyTorch', 'jax': 'JAX'}[record['framework']]
    together = len(record.get('timed_with', ()))
    together = f' (with {together} other run{"s" * (together > 1)})' if together else ''
    return (f'Reference run ({framework}, {record["recorded"][:10]}, commit '
            f'{record["commit"][:7]}): {len(record["history"]["epoch"])} epochs on '
            f'{data["num_train"]:,} {data["name"]} training images, validated on '
            f'{data["num_val"]:,}, in {record["wall_time_s"] / 60:.0f} min{together} '
            f'on {where}; validation accuracy {record["final_val_acc"]:.3f}.')


class HistoryBoard:
    """The record's history in the shape of a ProgressBoard's ``data``, for
    ``plot_runs``."""
    def __init__(self, history):
        self.data = {key: list(zip(history['epoch'], history[key])) for key in HISTORY_KEYS}


def recording_folder(run):
    """The folder to record into, or None: only full runs with D2L_VIT_RECORD set."""
    folder = os.environ.get(RECORD_ENV_VAR, '').strip()
    return pathlib.Path(folder) if folder and not run.quick else None


def save_parameters(path, flat_params, settings):
    """Write ``{'a/b/kernel': array}`` as float16 into an .npz at ``path``,
    with the settings that trained them, atomically."""
    arrays = {key: np.asarray(value, dtype=np.float16) for key, value in flat_params.items()}
    arrays['__settings__'] = np.array(settings)
    write_atomically(path, lambda file: np.savez_compressed(file, **arrays))


def load_parameters(path, expected_settings, otherwise='training the model here'):
    """The float32 ``{'a/b/kernel': array}`` that save_parameters wrote, if
    they were trained with ``expected_settings``; otherwise print why not and
    return None."""
    from d2l_extras.run import saved_params

    def read(file):
        with np.load(file, allow_pickle=False) as npz:
            return str(npz['__settings__']), {k: npz[k].astype(np.float32)
                                               for k in npz.files if k != '__settings__'}
    return saved_params.load(path, expected_settings, read, otherwise,
                             shown=shown_path(path))


def shown_path(path):
    """``path`` as messages show it: inside the library from its package
    folder on, so that no machine's folders appear in the pages."""
    path = pathlib.Path(path)
    try:
        return path.relative_to(FOLDER.parents[1])
    except ValueError:
        return path


def flatten(tree, prefix=''):
    flat = {}
    for key, value in tree.items():
        if hasattr(value, 'items'):
            flat.update(flatten(value, f'{prefix}{key}/'))
        else:
            flat[prefix + key] = value
    return flat


def unflatten(flat):
    tree = {}
    for path, value in flat.items():
        *parents, leaf = path.split('/')
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return tree


def full_settings(model_hparams, data, run, seed):
    """The settings_json that the full run of this model on all of
    Fashion-MNIST has: ``data``'s hyperparameters without its caps."""
    from d2l_extras.run import saved_params

    class FullData:
        hparams = {**data.hparams, 'num_train': None, 'num_val': None}

        class arrays:
            name = 'Fashion-MNIST'
    full_run = type(run)(False, run.full_max_epochs, run.full_max_epochs)
    return saved_params.settings_json(model_hparams, FullData, {'run': full_run, 'seed': seed})


def plot_with_reference(boards, records, labels=('val_loss', 'val_acc'), figsize=(7, 2.5)):
    """Each run's curves (ProgressBoards, by name) beside its reference
    record's, in the same colour, dashed."""
    from d2l_extras.d2l_jax import plotting
    plotting.use_svg_display()
    _, axes = plotting.plt.subplots(1, len(labels), figsize=figsize)
    single = len(boards) == 1
    for axis, label in zip(axes, labels):
        for i, (name, board) in enumerate(boards.items()):
            colour = f'C{i}'
            for source, style, suffix in ((board, '-o', 'this run'),
                                          (records.get(name), '--s', 'reference')):
                if isinstance(source, dict):
                    source = HistoryBoard(source['history'])
                if source is not None and source.data.get(label):
                    x, y = zip(*source.data[label])
                    axis.plot(x, y, style, color=colour, markersize=4,
                              label=suffix if single else f'{name}, {suffix}')
        axis.set_xlabel('epoch')
        axis.set_ylabel(label.replace('_', ' '))
        axis.grid()
        axis.legend(fontsize='small')
    plotting.plt.tight_layout()
    plotting.plt.show()


HOW_TO_RECORD = "(the book's repository records them with tools/reference_runs.py)"


def show_reference(page, name, framework):
    """Say in one line what the reference run of ``name`` on ``page`` was, or
    that none is recorded; returns its record or None."""
    record = find_record(page, name, framework)
    print(describe(record) if record else
          f'No reference run is recorded for {page} ({name}) yet {HOW_TO_RECORD}.')
    return record


def compare(page, framework, runs, run):
    """Record each of ``runs`` when recording is on (see recording_folder),
    then show the reference runs beside them, or say in one line that none is
    recorded. ``runs`` maps a name to (board, model hyperparameters, data
    module, settings of kept parameters or None, flat parameters or None).
    Returns the reference records found, by name."""
    folder = recording_folder(run)
    if folder is not None:
        for name, (board, hparams, data, settings, flat) in runs.items():
            record = make_record(page, name, framework, hparams, data, run,
                                 history_from_board(board),
                                 timed_with=[other for other in runs if other != name])
            path = write_record(record, folder)
            if flat is not None:
                save_parameters(parameters_path(page, name, framework, folder), flat, settings)
            print(f'Recorded this run as {path}.')
        start_clock()
    records = {name: record for name in runs
               if (record := find_record(page, name, framework)) is not None}
    if not records:
        print(f'No reference run is recorded for {page} ({", ".join(runs)}) yet '
              f'{HOW_TO_RECORD}.')
        return records
    for name, record in records.items():
        print(('' if len(runs) == 1 else f'{name}: ') + describe(record))
    plot_with_reference({name: board for name, (board, *_) in runs.items()}, records)
    return records


def load_kept_parameters(page, name, expected_settings, folder=None,
                         otherwise='looking for parameters trained here'):
    """The parameters that a reference run of ``name`` kept (either
    framework's run, both store Flax's names), if trained with
    ``expected_settings``; otherwise print why not and return None."""
    for framework in FRAMEWORKS:
        path = parameters_path(page, name, framework, folder)
        if path.exists():
            return load_parameters(path, expected_settings, otherwise)
    print(f'No reference run of {page} ({name}) kept its parameters: {otherwise}.')
    return None
