"""On/off switches read from the environment (D2L_VIT_QUICK, D2L_VIT_OFFLINE).

Both accept the same words, and a value that is neither on nor off is an error
that says what to write, rather than a silent guess.
"""
import os

_VALUES = {'1': True, 'true': True, 'yes': True, 'on': True,
           '0': False, 'false': False, 'no': False, 'off': False}


def env_switch(name, unset_means):
    """True or False from the environment variable `name`, or `unset_means`
    when it is unset, empty or 'auto'."""
    value = os.environ.get(name, '').strip().lower()
    if value in ('', 'auto'):
        return unset_means
    if value not in _VALUES:
        raise ValueError(f'{name}={value!r} is not understood: use 1 (on), 0 (off) '
                         'or leave it unset')
    return _VALUES[value]
