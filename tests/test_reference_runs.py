"""Reference runs: a record round-trips, a malformed one is refused naming its
file, an interrupted write leaves the old record whole, a page shows the
reference when there is one and says so when there is none, and the kept
parameters load in both tabs, only for the model and data that trained them."""
import collections
import json
import os
import pathlib

import jax
import numpy as np
import pytest
import torch
from jax import numpy as jnp

from d2l_extras import jax as jax_lib
from d2l_extras.run import quick_mode, reference_runs
from d2l_extras import torch as torch_lib
from test_trained_params import SMALL_VIT, torch_vit

Point = collections.namedtuple('Point', ['x', 'y'])
FULL = quick_mode.RunSize(False, 2, 2)
SECTION = ('vision-transformer', 'vit')


class Board:
    """What a ProgressBoard holds after 2 epochs of 4 minibatches: two
    training points per epoch, each at the mean position of the two minibatches
    it averages (0 and 0.25, ...), and one validation point per epoch."""
    def __init__(self):
        self.data = {'train_loss': [Point(0.125, 2.0), Point(0.625, 1.6), Point(1.125, 1.2),
                                    Point(1.625, 1.0)],
                     'val_loss': [Point(1, 1.5), Point(2, 1.1)],
                     'val_acc': [Point(1, 0.5), Point(2, 0.625)]}


@pytest.fixture
def data():
    return torch_lib.FashionMNIST(batch_size=32, resize=(32, 32), num_train=64, num_val=32)


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """An empty package folder of records, for this test only."""
    monkeypatch.setattr(reference_runs, 'FOLDER', tmp_path / 'records')
    return tmp_path / 'records'


def full_data():
    """All of the stand-in's examples, standing in for the full Fashion-MNIST
    that a reference run trains on (the parameters' check asks for it)."""
    data = torch_lib.FashionMNIST(batch_size=32, resize=(32, 32))
    data.arrays.name = 'Fashion-MNIST'
    return data


def record(data, **changes):
    made = reference_runs.make_record('page', 'vit', 'pytorch', {'lr': 0.1}, data, FULL,
                                      reference_runs.history_from_board(Board()))
    return {**made, **changes}


def test_the_history_is_one_value_per_epoch_from_the_board():
    history = reference_runs.history_from_board(Board())
    assert history == {'epoch': [1, 2], 'train_loss': [1.8, 1.1], 'val_loss': [1.5, 1.1],
                       'val_acc': [0.5, 0.625]}


def test_the_jax_board_gives_the_same_history():
    from d2l_extras.d2l_jax.plotting import ProgressBoard
    board = ProgressBoard(display=False)  # it keeps plain (x, y) tuples
    for label, points in Board().data.items():
        for x, y in points:
            board.draw(x, y, label)
    assert reference_runs.history_from_board(board) == \
        reference_runs.history_from_board(Board())


def test_a_record_round_trips(data, folder):
    written = record(data)
    path = reference_runs.write_record(written, folder)
    assert path == folder / 'page--vit--pytorch.json'
    assert reference_runs.read_record('page', 'vit', 'pytorch') == written
    assert written['final_val_acc'] == 0.625 and written['dataset']['num_train'] == 64
    assert written['training']['max_epochs'] == 2 and written['training']['batch_size'] == 32
    assert written['versions']['torch'] == torch.__version__
    assert {'cpu', 'cores', 'gpu'} <= set(written['hardware']) and written['commit']


@pytest.mark.parametrize('change, message', [
    ({'history': {'epoch': [1, 2], 'train_loss': [1.0], 'val_loss': [1, 1], 'val_acc': [.5, .5]}},
     'one value per epoch'),
    ({'final_val_acc': 1.5}, r'not in \[0, 1\]'),
    ({'framework': 'mxnet'}, 'neither of'),
    ({'format': 99}, 'format 99'),
    ({'wall_time_s': 'long'}, "'wall_time_s' should be a float"),
])
def test_a_malformed_record_is_refused_naming_the_file(data, folder, change, message):
    folder.mkdir()
    path = folder / 'page--vit--pytorch.json'
    path.write_text(json.dumps(record(data, **change)))
    with pytest.raises(reference_runs.RecordError, match=f'{path}: .*{message}'):
        reference_runs.read_record('page', 'vit', 'pytorch')


def test_a_record_that_is_not_json_is_refused_naming_the_file(folder):
    folder.mkdir()
    (folder / 'page--vit--jax.json').write_text('{"format": 1,')
    with pytest.raises(reference_runs.RecordError, match='page--vit--jax.json is not valid JSON'):
        reference_runs.read_record('page', 'vit', 'jax')


def test_an_interrupted_write_leaves_the_old_record_whole(data, folder, monkeypatch):
    reference_runs.write_record(record(data), folder)
    before = (folder / 'page--vit--pytorch.json').read_text()

    def interrupted(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(os, 'replace', interrupted)
    with pytest.raises(KeyboardInterrupt):
        reference_runs.write_record(record(data, final_val_acc=0.9), folder)
    assert (folder / 'page--vit--pytorch.json').read_text() == before
    assert sorted(p.name for p in folder.iterdir()) == ['page--vit--pytorch.json']


def test_only_a_full_run_with_the_switch_set_is_recorded(monkeypatch, tmp_path):
    quick = quick_mode.RunSize(True, 2, 10, 1024, 512)
    assert reference_runs.recording_folder(FULL) is None  # conftest unsets the switch
    monkeypatch.setenv('D2L_VIT_RECORD', str(tmp_path))
    assert reference_runs.recording_folder(quick) is None
    assert reference_runs.recording_folder(FULL) == tmp_path


def test_a_page_says_in_one_line_that_no_reference_is_recorded(data, folder, capsys):
    model = torch_vit(seed=0)
    model.board = Board()
    assert torch_lib.compare_with_reference('page', {'vit': model}, data, FULL) == {}
    line, = capsys.readouterr().out.strip().splitlines()
    assert line.startswith('No reference run is recorded for page (vit) yet')


def test_a_page_shows_the_reference_with_a_line_saying_what_it_was(data, folder, capsys):
    from matplotlib import pyplot as plt
    reference_runs.write_record(record(data), folder)
    model = jax_lib.ViT(*SMALL_VIT, 0.1)
    model.board.data = Board().data
    shown = jax_lib.compare_with_reference('page', {'vit': model}, data, FULL)['vit']
    line, = capsys.readouterr().out.strip().splitlines()
    assert shown['final_val_acc'] == 0.625  # the JAX tab shows the PyTorch record
    assert line.startswith('Reference run (PyTorch, ') and 'validation accuracy 0.625' in line
    assert '2 epochs on 64 UCI digits (offline stand-in) training images' in line
    assert len(plt.gcf().axes) == 2


def test_runs_trained_in_one_cell_say_that_their_time_is_shared(data, folder, monkeypatch,
                                                                capsys):
    monkeypatch.setenv('D2L_VIT_RECORD', str(folder))
    models = {name: torch_vit(seed=0) for name in ('fine-tuned', 'from scratch')}
    for model in models.values():
        model.board = Board()
    torch_lib.compare_with_reference('page', models, data, FULL)
    lines = [line for line in capsys.readouterr().out.splitlines()
             if line.startswith(('fine-tuned: Reference run', 'from scratch: Reference run'))]
    assert len(lines) == 2 and all(' min (with 1 other run) on ' in line for line in lines)
    assert reference_runs.read_record('page', 'from scratch', 'pytorch')['timed_with'] == [
        'fine-tuned']


def test_a_full_run_is_recorded_with_its_parameters_and_both_tabs_load_them(
        data, folder, monkeypatch, capsys):
    monkeypatch.setenv('D2L_VIT_RECORD', str(folder))
    full = full_data()
    trained = torch_vit(seed=0)
    trained.board = Board()
    torch_lib.compare_with_reference(SECTION[0], {SECTION[1]: trained}, full, FULL,
                                  keep_parameters=True)
    assert 'Recorded this run as' in capsys.readouterr().out
    assert reference_runs.read_record(*SECTION, 'pytorch')['dataset']['num_train'] == len(
        full.arrays.train_labels)
    # The parameters are float16: what comes back is the model rounded to it
    rounded = torch_vit(seed=0).half().float()
    rounded.load_state_dict({k: v.half().float() for k, v in trained.state_dict().items()})
    pytorch = torch_vit(seed=1)
    quick = quick_mode.RunSize(True, 1, 2, 64, 32)  # a page in quick mode loads the full run's
    assert torch_lib.load_reference_parameters(*SECTION, pytorch, data, quick)
    for name, value in rounded.state_dict().items():
        assert torch.equal(pytorch.state_dict()[name], value), name
    params = jax_lib.load_reference_parameters(*SECTION, jax_lib.ViT(*SMALL_VIT, 0.1), data, quick)
    X = np.random.default_rng(0).random((2, 1, 32, 32), np.float32)
    expected = rounded.eval()(torch.from_numpy(X)).detach().numpy()
    logits = jax_lib.ViT(*SMALL_VIT, 0.1).apply({'params': params}, jnp.asarray(X.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(logits, expected, atol=1e-4)


def test_parameters_kept_by_a_jax_run_load_into_the_pytorch_model(data, folder, monkeypatch, capsys):
    monkeypatch.setenv('D2L_VIT_RECORD', str(folder))
    model = jax_lib.ViT(*SMALL_VIT, 0.1)
    X = np.random.default_rng(0).random((2, 32, 32, 1), np.float32)
    params = model.init(jax.random.key(0), jnp.asarray(X))['params']
    model.board.data = Board().data
    jax_lib.compare_with_reference(SECTION[0], {SECTION[1]: model}, full_data(), FULL,
                               params={SECTION[1]: params})
    assert reference_runs.parameters_path(*SECTION, 'jax').exists()
    pytorch = torch_vit(seed=1)
    assert torch_lib.load_reference_parameters(*SECTION, pytorch, data, FULL)
    rounded = jax.tree.map(lambda p: p.astype(jnp.float16).astype(jnp.float32), params)
    expected = model.apply({'params': rounded}, jnp.asarray(X))
    logits = pytorch.eval()(torch.from_numpy(X.transpose(0, 3, 1, 2))).detach().numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4)


def test_parameters_of_another_model_or_other_data_are_refused(data, folder, monkeypatch, capsys):
    monkeypatch.setenv('D2L_VIT_RECORD', str(folder))
    full = full_data()
    trained = torch_vit(seed=0)
    trained.board = Board()
    torch_lib.compare_with_reference(SECTION[0], {SECTION[1]: trained}, full, FULL,
                                  keep_parameters=True)
    capsys.readouterr()
    assert not torch_lib.load_reference_parameters(*SECTION, torch_vit(seed=0, lr=0.05), data, FULL)
    assert 'other settings (model.lr=0.1 there, 0.05 here)' in capsys.readouterr().out
    other_size = torch_lib.FashionMNIST(batch_size=64, resize=(32, 32), num_train=64, num_val=32)
    assert jax_lib.load_reference_parameters(*SECTION, jax_lib.ViT(*SMALL_VIT, 0.1), other_size, FULL) is None
    assert 'data.batch_size=32 there, 64 here' in capsys.readouterr().out


def test_without_kept_parameters_the_page_says_so(data, folder, capsys):
    assert not torch_lib.load_reference_parameters(*SECTION, torch_vit(seed=0), data, FULL)
    assert 'No reference run of vision-transformer (vit) kept its parameters' in capsys.readouterr().out


def test_every_committed_record_is_valid_and_its_parameters_load():
    records = sorted(reference_runs.FOLDER.glob('*.json'))
    for path in records:
        record = json.loads(path.read_text())
        reference_runs.validate(record, str(path))
        assert path == reference_runs.record_path(record['page'], record['name'], record['framework'])
        # real data only: the UCI digits are the fine-tuning page's own task, not a stand-in
        assert not record['training']['quick']
        assert record['dataset']['name'] in ('Fashion-MNIST', 'CIFAR-10', 'UCI digits'), path
        assert not record['commit'].endswith('-dirty'), f'{path} was recorded from uncommitted code'
    for path in sorted(reference_runs.FOLDER.glob('*.npz')):
        assert path.with_suffix('.json') in records, f'{path} has no record'
        assert path.stat().st_size <= 15 * 2**20
        with np.load(path, allow_pickle=False) as npz:
            assert all(npz[k].dtype == np.float16 for k in npz.files if k != '__settings__')


def test_the_library_names_its_own_files_from_its_package_folder_on():
    # The pages print where parameters came from; the builder's folders stay out
    path = reference_runs.parameters_path('vision-transformer', 'vit', 'pytorch')
    assert str(reference_runs.shown_path(path)) == \
        'd2l_extras/reference_runs/vision-transformer--vit--pytorch.npz'
    elsewhere = pathlib.Path('/somewhere/else/vit.npz')
    assert reference_runs.shown_path(elsewhere) == elsewhere


def test_a_page_cut_as_a_script_runs_the_code_of_d2lbooks_notebook_of_its_tab():
    """tools/reference_runs.py --script (for a GPU machine without Jupyter or
    d2lbook) cuts the tabs itself; d2lbook only sorts the imports differently."""
    import pathlib
    import re
    import sys
    sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / 'tools'))
    import reference_runs as runner

    def words(code):
        return sorted(re.split(r'[\s,()]+', code))
    for page in ['vision-transformer', 'deit', 'swin']:
        for tab in runner.TABS:
            ours = runner.tab_code_cells(page, tab)
            theirs = [cell.source for cell in runner.tab_notebook(page, tab).cells
                      if cell.cell_type == 'code']
            assert len(ours) == len(theirs)
            for mine, d2lbooks in zip(ours, theirs):
                assert mine == d2lbooks or words(mine) == words(d2lbooks), (page, tab, mine[:200])


def test_a_page_says_where_another_pages_reference_run_ended(data, folder, capsys):
    for lib in (torch_lib, jax_lib):  # both tabs
        assert lib.show_reference('page', 'vit') is None
        assert capsys.readouterr().out.startswith('No reference run is recorded for page (vit) yet')
    reference_runs.write_record(record(data), folder)
    for lib in (torch_lib, jax_lib):
        lib.show_reference('page', 'vit')
        line, = capsys.readouterr().out.strip().splitlines()
        assert line.startswith('Reference run (PyTorch, ') and 'validation accuracy 0.625' in line


def test_a_record_names_the_commit_its_run_started_from(data, monkeypatch):
    # A run takes hours; what is checked out when it ends may be newer code
    monkeypatch.setitem(reference_runs._started, 'commit', 'f' * 40)
    assert record(data)['commit'] == 'f' * 40
