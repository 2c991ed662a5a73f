"""Trained parameters kept in a file with the settings that trained them.

A section that looks inside the model an earlier section trained can load what
that section saved instead of training it again, but only when everything that
decided the parameters matches: the model's hyperparameters, the run size, the
data and the seed. Otherwise (no file yet, other settings, a file that cannot
be read) the caller trains, and one printed line says why.

This module holds what both frameworks share; ``save_trained`` and
``load_trained`` in ``d2l_extras.torch`` and ``d2l_extras.jax`` write and read
each framework's parameters.
"""
import dataclasses
import json
import os

# Model hyperparameters added after parameters were saved with these settings:
# at their default they are left out, so that the files saved before still load.
LATER_DEFAULTS = {'posemb': 'learn'}


def settings_json(model_hyperparameters, data, settings):
    """One canonical string for what decides a model's trained parameters: its
    hyperparameters, the data module's (and the dataset's name), and the other
    settings of the run (run size, seed), which may be dataclasses."""
    def plain(value):  # for what JSON cannot hold; a function's text never matches
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return dataclasses.asdict(value)
        return str(value)
    model_hyperparameters = {
        name: value for name, value in model_hyperparameters.items()
        if name not in LATER_DEFAULTS or value != LATER_DEFAULTS[name]}
    record = {'model': model_hyperparameters,
              'data': {**data.hparams, 'name': data.arrays.name}, **settings}
    # JSON writes tuples as lists: a size (96, 96) matches [96, 96]
    return json.dumps(record, default=plain, sort_keys=True)


def write_atomically(path, write):
    """Call ``write(file)`` on a new file next to ``path``, then rename it to
    ``path``: a reader sees the old file or the whole new one, never a part."""
    temporary = f'{path}.{os.getpid()}.part'
    try:
        with open(temporary, 'wb') as file:
            write(file)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def differences(saved, expected):
    """The settings in which two settings_json strings differ, as one line."""
    def flat(settings):  # {'model': {'lr': 0.1}} -> {'model.lr': 0.1}
        items = {}
        for name, value in json.loads(settings).items():
            if isinstance(value, dict):
                items.update({f'{name}.{inner}': item for inner, item in value.items()})
            else:
                items[name] = value
        return items
    saved, expected = flat(saved), flat(expected)
    names = sorted(name for name in set(saved) | set(expected)
                   if saved.get(name) != expected.get(name))
    return '; '.join(f'{name}={saved.get(name)!r} there, {expected.get(name)!r} here'
                     for name in names)


def load(path, expected, read, otherwise='training the model here', shown=None):
    """What ``read(file)`` returns after the settings, if the file at ``path``
    was saved with the ``expected`` settings; otherwise print why not and what
    happens ``otherwise``, and return None. ``read`` returns
    ``(settings_json, parameters)``. The messages name the file ``shown``
    (default: ``path``)."""
    shown = path if shown is None else shown
    try:
        with open(path, 'rb') as file:
            saved, parameters = read(file)
    except FileNotFoundError:
        print(f'No {shown} yet: {otherwise}.')
        return None
    except Exception as error:  # a truncated or foreign file, whatever its library says
        print(f'Cannot read {shown} ({type(error).__name__}: {error}); {otherwise} '
              '(save it again, or delete it, to stop this message).')
        return None
    if saved != expected:
        print(f'{shown} was trained with other settings ({differences(saved, expected)}); '
              f'{otherwise}.')
        return None
    print(f'Loaded the trained parameters from {shown}.')
    return parameters
