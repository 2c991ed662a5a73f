"""Saving the section's trained parameters and loading them in a later section
(save_trained and load_trained, in both frameworks): they come back exactly,
and only for the model, data and run that trained them."""
import jax
import numpy as np
import pytest
import torch
from jax import numpy as jnp

from d2l_extras import jax as jax_lib
from d2l_extras import torch as torch_lib
from d2l_extras.run import saved_params

SMALL_VIT = (32, 8, 64, 128, 4, 1, 0.1, 0.1)  # img, patch, width, MLP, heads, blocks, dropouts


@pytest.fixture(scope='module')
def data_and_run():
    run = torch_lib.run_size(max_epochs=10, verbose=False, quick_num_train=128, quick_num_val=64)
    data = torch_lib.FashionMNIST(batch_size=32, resize=(32, 32), num_train=run.num_train,
                               num_val=run.num_val)
    return data, run


def torch_vit(seed, lr=0.1):
    torch.manual_seed(seed)
    return torch_lib.ViT(*SMALL_VIT, lr)


def test_pytorch_parameters_come_back_exactly(tmp_path, data_and_run, capsys):
    data, run = data_and_run
    path = str(tmp_path / 'vit.params')
    trained, other = torch_vit(seed=0), torch_vit(seed=1)
    torch_lib.save_trained(path, trained, data, run=run, seed=0)
    assert torch_lib.load_trained(path, other, data, run=run, seed=0)
    assert 'Loaded the trained parameters' in capsys.readouterr().out
    for name, value in trained.state_dict().items():
        assert torch.equal(other.state_dict()[name], value), name


def test_jax_parameters_come_back_exactly(tmp_path, data_and_run, capsys):
    data, run = data_and_run
    path = str(tmp_path / 'vit.params')
    model = jax_lib.ViT(*SMALL_VIT, 0.1)
    X = jnp.asarray(np.random.default_rng(0).random((2, 32, 32, 1), np.float32))
    params = model.init(jax.random.key(0), X)['params']
    jax_lib.save_trained(path, model, params, data, run=run, seed=0)
    loaded = jax_lib.load_trained(path, jax_lib.ViT(*SMALL_VIT, 0.1), data, run=run, seed=0)
    assert 'Loaded the trained parameters' in capsys.readouterr().out
    assert jax.tree.structure(loaded) == jax.tree.structure(params)
    assert all(jax.tree.leaves(jax.tree.map(
        lambda a, b: a.dtype == b.dtype and bool((a == b).all()), loaded, params)))
    np.testing.assert_array_equal(model.apply({'params': loaded}, X),
                                  model.apply({'params': params}, X))


def test_other_settings_are_refused_and_named(tmp_path, data_and_run, capsys):
    data, run = data_and_run
    path = str(tmp_path / 'vit.params')
    torch_lib.save_trained(path, torch_vit(seed=0), data, run=run, seed=0)
    model = torch_vit(seed=1, lr=0.05)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    assert not torch_lib.load_trained(path, model, data, run=run, seed=1)
    message = capsys.readouterr().out
    assert 'model.lr=0.1 there, 0.05 here' in message and 'seed=0 there, 1 here' in message
    assert 'training the model here' in message
    assert all(torch.equal(model.state_dict()[name], value) for name, value in before.items())

    smaller = torch_lib.FashionMNIST(batch_size=32, resize=(32, 32), num_train=64,
                                  num_val=run.num_val)
    assert not torch_lib.load_trained(path, torch_vit(seed=0), smaller, run=run, seed=0)
    assert 'data.num_train=128 there, 64 here' in capsys.readouterr().out


def test_both_tabs_record_the_same_settings(data_and_run):
    data, run = data_and_run
    settings = {'run': run, 'seed': 0}
    assert (saved_params.settings_json(torch_vit(seed=0).hparams, data, settings) ==
            saved_params.settings_json(jax_lib.hyperparameters(jax_lib.ViT(*SMALL_VIT, 0.1)), data,
                                         settings))


def test_no_file_or_an_unreadable_one_means_training(tmp_path, data_and_run, capsys):
    data, run = data_and_run
    path = tmp_path / 'vit.params'
    assert not torch_lib.load_trained(str(path), torch_vit(seed=0), data, run=run, seed=0)
    assert 'No ' in capsys.readouterr().out
    torch_lib.save_trained(str(path), torch_vit(seed=0), data, run=run, seed=0)
    path.write_bytes(path.read_bytes()[:1000])  # cut short, as by a full disk
    assert not torch_lib.load_trained(str(path), torch_vit(seed=0), data, run=run, seed=0)
    assert jax_lib.load_trained(str(path), jax_lib.ViT(*SMALL_VIT, 0.1), data, run=run, seed=0) is None
    assert capsys.readouterr().out.count('Cannot read') == 2


def test_an_interrupted_save_leaves_the_old_file_whole(tmp_path):
    path = tmp_path / 'vit.params'
    path.write_bytes(b'the old parameters')

    def write_then_fail(file):
        file.write(b'half of the new')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        saved_params.write_atomically(str(path), write_then_fail)
    assert path.read_bytes() == b'the old parameters'
    assert [file.name for file in tmp_path.iterdir()] == ['vit.params']
