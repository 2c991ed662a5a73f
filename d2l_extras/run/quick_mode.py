"""Quick mode: the same notebooks on a small budget, so the book builds on a CPU.

One switch, the environment variable ``D2L_VIT_QUICK``: ``1`` forces quick mode,
``0`` forces the full settings, unset (or ``auto``) picks quick mode exactly when
no accelerator is found. Quick mode caps the number of epochs and of training and
validation examples; the model and every other hyperparameter stay as the text
says, so a quick run is the full run, only shorter.

A second switch, ``D2L_VIT_SMOKE=1``, is for tests that check that every cell
of a notebook runs (on other library versions, say), not what training
reaches: one epoch on at most SMOKE_NUM_TRAIN training and SMOKE_NUM_VAL
validation examples.
"""
import dataclasses

from d2l_extras.run import reference_runs
from d2l_extras.run.switches import env_switch

ENV_VAR = 'D2L_VIT_QUICK'
QUICK_MAX_EPOCHS = 2
QUICK_NUM_TRAIN = 1024
QUICK_NUM_VAL = 512
SMOKE_ENV_VAR = 'D2L_VIT_SMOKE'
# One minibatch of the pages' usual 128: a smoke run checks that each cell
# runs, and on a CPU every further step costs seconds.
SMOKE_NUM_TRAIN = 128
SMOKE_NUM_VAL = 128


def quick_mode_enabled(has_accelerator):
    """Whether to run in quick mode, from ``D2L_VIT_QUICK`` or the hardware."""
    return env_switch(ENV_VAR, unset_means=not has_accelerator)


@dataclasses.dataclass(frozen=True)
class RunSize:
    """How long to train: epochs, and how many examples (None means all)."""
    quick: bool
    max_epochs: int
    full_max_epochs: int
    num_train: int = None
    num_val: int = None

    def __str__(self):
        if not self.quick:
            return (f'Full settings: {self.max_epochs} epochs on the whole '
                    f'dataset (set {ENV_VAR}=1 for a quick run).')
        return (f'Quick mode: {self.max_epochs} of {self.full_max_epochs} '
                f'epochs on at most {self.num_train} training and '
                f'{self.num_val} validation examples (set {ENV_VAR}=0 for the '
                'full settings).')


@dataclasses.dataclass(frozen=True)
class SmokeRunSize(RunSize):
    """A quick run cut short by D2L_VIT_SMOKE. It has no fields of its own, so
    that parameters saved with a RunSize's settings keep matching."""

    def __str__(self):
        return (f'Smoke run: {self.max_epochs} of {self.full_max_epochs} '
                f'epochs on at most {self.num_train} training and '
                f'{self.num_val} validation examples, to check that every '
                f'cell runs (unset {SMOKE_ENV_VAR} for quick mode).')


def run_size(max_epochs, has_accelerator, verbose=True,
             quick_max_epochs=QUICK_MAX_EPOCHS, quick_num_train=QUICK_NUM_TRAIN,
             quick_num_val=QUICK_NUM_VAL):
    """The run size for a training cell that asks for ``max_epochs``.

    Prints one line saying which mode this is and how much it trains. A
    notebook that trains many models may ask for fewer quick epochs or fewer
    quick training and validation examples (at most QUICK_NUM_TRAIN and
    QUICK_NUM_VAL), so that it still builds in minutes on a CPU.
    """
    for name, value, limit in [('quick_num_train', quick_num_train, QUICK_NUM_TRAIN),
                               ('quick_num_val', quick_num_val, QUICK_NUM_VAL)]:
        if not 0 < value <= limit:
            raise ValueError(f'{name}={value} is outside 1..{limit}: quick mode may '
                             'use fewer examples, never more')
    if env_switch(SMOKE_ENV_VAR, unset_means=False):
        if not env_switch(ENV_VAR, unset_means=True):
            raise ValueError(f'{SMOKE_ENV_VAR}=1 asks for a smoke run and {ENV_VAR}=0 '
                             'for the full settings: unset one of them')
        size = SmokeRunSize(True, 1, max_epochs, min(quick_num_train, SMOKE_NUM_TRAIN),
                            min(quick_num_val, SMOKE_NUM_VAL))
    elif quick_mode_enabled(has_accelerator):
        size = RunSize(True, min(max_epochs, quick_max_epochs), max_epochs,
                       quick_num_train, quick_num_val)
    else:
        size = RunSize(False, max_epochs, max_epochs)
    reference_runs.start_clock()
    if verbose:
        print(size)
    return size
