"""The quick/full switch: one environment variable, one printed line; the
offline switch reads the same words; a smoke run, for tests, is shorter still."""
import dataclasses

import pytest

from d2l_extras import jax as jax_lib
from d2l_extras import torch as torch_lib
from d2l_extras.data import download
from d2l_extras.run import quick_mode

from helpers import LIBS, TAB_IDS, fit


@pytest.mark.parametrize('value, accelerator, expected', [
    ('1', True, True), ('0', False, False), ('auto', False, True), ('auto', True, False),
    ('', True, False), ('yes', True, True), ('off', False, False)])
def test_switch(monkeypatch, value, accelerator, expected):
    monkeypatch.setenv(quick_mode.ENV_VAR, value)
    assert quick_mode.quick_mode_enabled(has_accelerator=accelerator) is expected


def test_unset_means_quick_mode_exactly_without_an_accelerator(monkeypatch):
    monkeypatch.delenv(quick_mode.ENV_VAR)
    assert quick_mode.quick_mode_enabled(has_accelerator=False)
    assert not quick_mode.quick_mode_enabled(has_accelerator=True)


def test_a_misspelt_value_is_an_error_that_lists_the_choices(monkeypatch):
    monkeypatch.setenv(quick_mode.ENV_VAR, 'fast')
    with pytest.raises(ValueError, match='use 1 .* 0 .* unset'):
        quick_mode.quick_mode_enabled(has_accelerator=False)


@pytest.mark.parametrize('value, expected', [('1', True), ('on', True), ('0', False),
                                             ('no', False), ('', False)])
def test_the_offline_switch_reads_the_same_words(monkeypatch, value, expected):
    monkeypatch.setenv(download.OFFLINE_ENV_VAR, value)
    assert download.offline_forced() is expected


def test_a_misspelt_offline_value_is_an_error_too(monkeypatch):
    monkeypatch.setenv(download.OFFLINE_ENV_VAR, 'offline')
    with pytest.raises(ValueError, match='D2L_VIT_OFFLINE=.* use 1 .* 0 .* unset'):
        download.offline_forced()


def test_quick_mode_caps_and_prints_one_line(monkeypatch, capsys):
    monkeypatch.setenv(quick_mode.ENV_VAR, '1')
    size = quick_mode.run_size(max_epochs=10, has_accelerator=True)
    assert (size.max_epochs, size.num_train, size.num_val) == (
        quick_mode.QUICK_MAX_EPOCHS, quick_mode.QUICK_NUM_TRAIN, quick_mode.QUICK_NUM_VAL)
    out = capsys.readouterr().out.splitlines()
    assert out == [f'Quick mode: 2 of 10 epochs on at most {quick_mode.QUICK_NUM_TRAIN} training '
                   f'and {quick_mode.QUICK_NUM_VAL} validation examples (set D2L_VIT_QUICK=0 for '
                   'the full settings).']


def test_full_settings_train_everything(monkeypatch, capsys):
    monkeypatch.setenv(quick_mode.ENV_VAR, '0')
    size = quick_mode.run_size(max_epochs=10, has_accelerator=False)
    assert (size.max_epochs, size.num_train, size.num_val) == (10, None, None)
    assert capsys.readouterr().out.startswith('Full settings: 10 epochs')


def test_a_notebook_that_trains_many_models_can_ask_for_fewer_quick_epochs(monkeypatch, capsys):
    monkeypatch.setenv(quick_mode.ENV_VAR, '1')
    size = quick_mode.run_size(max_epochs=10, has_accelerator=False, quick_max_epochs=1)
    assert (size.max_epochs, size.num_train) == (1, quick_mode.QUICK_NUM_TRAIN)
    assert capsys.readouterr().out.startswith('Quick mode: 1 of 10 epochs')
    monkeypatch.setenv(quick_mode.ENV_VAR, '0')
    assert quick_mode.run_size(max_epochs=10, has_accelerator=False, quick_max_epochs=1).max_epochs == 10


def test_a_notebook_can_ask_for_fewer_quick_examples_but_not_more(monkeypatch, capsys):
    monkeypatch.setenv(quick_mode.ENV_VAR, '1')
    size = quick_mode.run_size(max_epochs=10, has_accelerator=False, quick_num_train=512,
                               quick_num_val=128)
    assert (size.num_train, size.num_val) == (512, 128)
    assert 'at most 512 training and 128 validation' in capsys.readouterr().out
    monkeypatch.setenv(quick_mode.ENV_VAR, '0')
    assert quick_mode.run_size(max_epochs=10, has_accelerator=False, quick_num_train=512).num_train is None
    with pytest.raises(ValueError, match='quick_num_train=4096 is outside 1..1024'):
        quick_mode.run_size(max_epochs=10, has_accelerator=False, quick_num_train=4096)
    with pytest.raises(ValueError, match='quick_num_val=0 is outside 1..512: .* never more'):
        quick_mode.run_size(max_epochs=10, has_accelerator=False, quick_num_val=0)


def test_a_smoke_run_trains_one_epoch_on_fewer_examples_than_any_quick_run(monkeypatch, capsys):
    monkeypatch.setenv(quick_mode.SMOKE_ENV_VAR, '1')
    size = quick_mode.run_size(max_epochs=10, has_accelerator=True)
    assert isinstance(size, quick_mode.SmokeRunSize)
    assert (size.quick, size.max_epochs) == (True, 1)
    # Saved parameters compare run sizes as dictionaries: a smoke run adds no key
    assert dataclasses.asdict(size).keys() == dataclasses.asdict(quick_mode.RunSize(True, 1, 10)).keys()
    assert (size.num_train, size.num_val) == (quick_mode.SMOKE_NUM_TRAIN, quick_mode.SMOKE_NUM_VAL)
    assert capsys.readouterr().out.startswith('Smoke run: 1 of 10 epochs on at most ')
    # A notebook's own smaller quick budget stays smaller
    size = quick_mode.run_size(max_epochs=10, has_accelerator=False, quick_num_train=64)
    assert (size.num_train, size.num_val) == (64, quick_mode.SMOKE_NUM_VAL)


@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
def test_a_smoke_run_at_the_pages_batch_size_still_plots_the_training_loss(lib):
    # d2l 1.0.3's PyTorch Module plots the training loss every half epoch of
    # minibatches, and so none in an epoch of one minibatch: the pages'
    # plot_runs would have no curve to draw
    data = lib.FashionMNIST(batch_size=128, resize=(16, 16), num_train=quick_mode.SMOKE_NUM_TRAIN,
                            num_val=quick_mode.SMOKE_NUM_VAL)
    model = lib.ViT(16, 8, 16, 32, 2, 1, 0.0, 0.0)
    fit(lib, model, data)
    assert model.board.data['train_loss'] and model.board.data['val_acc']


def test_both_tabs_plot_the_training_loss_at_the_same_places():
    # d2l's PyTorch Module plots a minibatch's loss before the trainer counts
    # the minibatch; the JAX trainer does the same, so the tabs' curves line up
    places = {}
    for lib in LIBS:
        data = lib.FashionMNIST(batch_size=32, resize=(16, 16), num_train=128, num_val=32)
        model = lib.ViT(16, 8, 16, 32, 2, 1, 0.0, 0.0)
        fit(lib, model, data, max_epochs=2)
        places[lib] = [float(x) for x, _ in model.board.data['train_loss']]
    assert places[torch_lib] == places[jax_lib] == [0.125, 0.625, 1.125, 1.625]


def test_a_smoke_run_with_the_full_settings_is_an_error(monkeypatch):
    monkeypatch.setenv(quick_mode.SMOKE_ENV_VAR, '1')
    monkeypatch.setenv(quick_mode.ENV_VAR, '0')
    with pytest.raises(ValueError, match='D2L_VIT_SMOKE=1 .* D2L_VIT_QUICK=0 .* unset one'):
        quick_mode.run_size(max_epochs=10, has_accelerator=False)
