"""The Fashion-MNIST loader: cache, checksums, atomic downloads, offline stand-in."""
import gzip
import os
import hashlib
import socket
import threading
import time

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from d2l_extras.data import download, fashion_mnist, standins
from d2l_extras import jax as jax_lib
from d2l_extras import torch as torch_lib
from d2l_extras.data.resize import resize_images


def idx_bytes(array):
    """An IDX file of unsigned bytes, the format of (Fashion-)MNIST."""
    header = bytes([0, 0, 0x08, array.ndim]) + b''.join(
        int(d).to_bytes(4, 'big') for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture
def small_fashion_mnist(tmp_path, monkeypatch):
    """A tiny dataset in Fashion-MNIST's files, and FILES pointing at its checksums."""
    rng = np.random.default_rng(0)
    arrays = {'train_images': rng.integers(0, 256, (40, 28, 28)),
              'train_labels': np.arange(40) % 10,
              'val_images': rng.integers(0, 256, (20, 28, 28)),
              'val_labels': np.arange(20) % 10}
    source = tmp_path / 'mirror'
    source.mkdir()
    files = {}
    for key, (file_name, _) in fashion_mnist.FILES.items():
        data = gzip.compress(idx_bytes(arrays[key]))
        (source / file_name).write_bytes(data)
        files[key] = (file_name, hashlib.md5(data).hexdigest())
    monkeypatch.setattr(fashion_mnist, 'FILES', files)
    return arrays, source


def test_reads_cached_idx_files(small_fashion_mnist, tmp_path):
    arrays, source = small_fashion_mnist
    cache = tmp_path / 'data' / 'fashion-mnist'
    cache.mkdir(parents=True)
    for file in source.iterdir():
        (cache / file.name).write_bytes(file.read_bytes())
    data = fashion_mnist.load_fashion_mnist(tmp_path / 'data')
    assert data.name == 'Fashion-MNIST' and data.max_value == 255
    np.testing.assert_array_equal(data.train_images, arrays['train_images'])
    np.testing.assert_array_equal(data.val_labels, arrays['val_labels'])
    assert data.text_labels[9] == 'ankle boot'


def test_downloads_verifies_and_caches(small_fashion_mnist, tmp_path, monkeypatch):
    arrays, source = small_fashion_mnist
    monkeypatch.delenv('D2L_VIT_OFFLINE')
    monkeypatch.setattr(fashion_mnist, 'MIRRORS', (source.as_uri() + '/',))
    data = fashion_mnist.load_fashion_mnist(tmp_path / 'data')
    assert data.name == 'Fashion-MNIST'
    np.testing.assert_array_equal(data.train_labels, arrays['train_labels'])
    cached = sorted(p.name for p in (tmp_path / 'data' / 'fashion-mnist').iterdir())
    assert cached == sorted(name for name, _ in fashion_mnist.FILES.values())


def test_a_bad_download_leaves_no_file_behind(tmp_path):
    mirror = tmp_path / 'mirror'
    mirror.mkdir()
    (mirror / 'labels.gz').write_bytes(b'not what was published')
    folder = tmp_path / 'cache'
    with pytest.raises(download.DownloadError, match='checksum mismatch'):
        download.download('labels.gz', '0' * 32, folder, mirrors=(mirror.as_uri() + '/',))
    assert list(folder.iterdir()) == []


def test_a_mirror_that_never_answers_does_not_hang(tmp_path):
    server = socket.socket()
    server.bind(('127.0.0.1', 0))
    server.listen()  # accepts connections, never answers
    url = f'http://127.0.0.1:{server.getsockname()[1]}/'
    start = time.monotonic()
    try:
        with pytest.raises(download.DownloadError):
            download.download('x.gz', '0' * 32, tmp_path, mirrors=(url,), timeout=1.0)
    finally:
        server.close()
    assert time.monotonic() - start < 8
    assert list(tmp_path.iterdir()) == []


def test_corrupt_cache_gives_a_clear_error(small_fashion_mnist, tmp_path):
    _, source = small_fashion_mnist
    cache = tmp_path / 'data' / 'fashion-mnist'
    cache.mkdir(parents=True)
    for file in source.iterdir():
        (cache / file.name).write_bytes(file.read_bytes()[:-10])  # truncated
    with pytest.raises(download.CorruptDataError, match='is corrupt.*Delete .* and run again'):
        fashion_mnist.load_fashion_mnist(tmp_path / 'data')


def test_idx_reader_rejects_a_file_that_is_not_idx(tmp_path):
    path = tmp_path / 'images.gz'
    path.write_bytes(gzip.compress(b'\x01\x02\x03\x04' + bytes(100)))
    with pytest.raises(download.CorruptDataError, match='not an IDX file'):
        fashion_mnist.read_idx(path)
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((3, 4, 4)))[:-5]))
    with pytest.raises(download.CorruptDataError, match='truncated'):
        fashion_mnist.read_idx(path)


def test_offline_falls_back_to_the_digits_and_says_so(tmp_path, capsys, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError('D2L_VIT_OFFLINE=1 must not touch the network')
    monkeypatch.setattr(download.urllib.request, 'urlopen', no_network)
    data = fashion_mnist.load_fashion_mnist(tmp_path)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and 'not available offline' in lines[0] and 'UCI digits' in lines[0]
    assert data.name.startswith('UCI digits') and data.num_classes == 10


def test_unreachable_network_falls_back_quickly(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv('D2L_VIT_OFFLINE')
    closed = socket.socket()
    closed.bind(('127.0.0.1', 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: connections are refused
    monkeypatch.setattr(fashion_mnist, 'MIRRORS', (f'http://127.0.0.1:{port}/',))
    start = time.monotonic()
    data = fashion_mnist.load_fashion_mnist(tmp_path)
    assert time.monotonic() - start < 8
    assert data.name.startswith('UCI digits')
    assert 'not available offline' in capsys.readouterr().out


def test_standin_split_is_stratified_disjoint_and_repeatable():
    data = standins.load_digits()
    assert len(data.train_labels) + len(data.val_labels) == 1797
    train_counts = np.bincount(data.train_labels)
    val_counts = np.bincount(data.val_labels)
    assert (val_counts > 0).all() and (train_counts > 0).all()
    np.testing.assert_allclose(val_counts / (train_counts + val_counts), 384 / 1797, atol=0.005)
    train_rows = {img.tobytes() for img in data.train_images}
    overlap = sum(img.tobytes() in train_rows for img in data.val_images)
    assert overlap < 5  # the UCI set itself has a few duplicate images
    np.testing.assert_array_equal(standins.load_digits().val_labels, data.val_labels)


def test_standin_validation_set_is_whole_minibatches_of_128():
    # so that a JAX evaluation compiles one shape, not a second for a last, smaller minibatch
    data = jax_lib.FashionMNIST(batch_size=128)
    assert [len(y) for _, y in data.val_dataloader()] == [128, 128, 128]


def test_stratified_counts_keep_the_proportions_and_the_total():
    labels = np.repeat(np.arange(3), [50, 30, 20])
    np.testing.assert_array_equal(standins.stratified_counts(labels, 10), [5, 3, 2])
    counts = standins.stratified_counts(labels, 7)
    assert counts.sum() == 7 and (np.abs(counts - 7 * np.array([.5, .3, .2])) < 1).all()


def test_resize_matches_torch_antialiased_bilinear():
    images = np.random.default_rng(0).random((3, 28, 28)).astype(np.float32)
    for size in (96, 14, (20, 40)):
        expected = F.interpolate(torch.from_numpy(images)[:, None], size=size, mode='bilinear',
                                 antialias=True, align_corners=False)[:, 0].numpy()
        np.testing.assert_allclose(resize_images(images, size), expected, atol=1e-5)


def test_resize_keeps_constant_images_constant():
    np.testing.assert_allclose(resize_images(np.full((1, 8, 8), 7.0), 96), 7.0, rtol=1e-6)


def test_both_data_modules_give_the_same_batches_in_their_layouts():
    torch_data = torch_lib.FashionMNIST(batch_size=16, resize=(32, 32), num_train=64, num_val=32)
    jax_data = jax_lib.FashionMNIST(batch_size=16, resize=(32, 32), num_train=64, num_val=32)
    (X_t, y_t), (X_j, y_j) = next(iter(torch_data.val_dataloader())), next(iter(jax_data.val_dataloader()))
    assert X_t.shape == (16, 1, 32, 32) and X_t.dtype == torch.float32
    assert X_j.shape == (16, 32, 32, 1)
    np.testing.assert_array_equal(X_t.numpy().transpose(0, 2, 3, 1), X_j)
    np.testing.assert_array_equal(y_t.numpy(), y_j)
    assert 0 <= X_j.min() and X_j.max() <= 1
    assert len(torch_data.train_dataloader()) == 4 and len(jax_data.val_dataloader()) == 2
    assert torch_data.text_labels([3]) == ['3']


def test_training_batches_are_reshuffled_every_epoch():
    data = jax_lib.FashionMNIST(batch_size=8, num_train=64, num_val=8)
    loader = data.train_dataloader()
    first, second = [np.concatenate([y for _, y in loader]) for _ in range(2)]
    assert sorted(first) == sorted(second) and not np.array_equal(first, second)


@pytest.fixture
def system_copy(small_fashion_mnist, tmp_path, monkeypatch):
    """The tiny dataset recompressed, as Debian ships Fashion-MNIST: the .gz
    checksums differ from the published ones, the contents' match."""
    arrays, source = small_fashion_mnist
    folder = tmp_path / 'system'
    folder.mkdir()
    raw = {}
    for key, (file_name, _) in fashion_mnist.FILES.items():
        data = idx_bytes(arrays[key])
        raw[key] = hashlib.md5(data).hexdigest()
        (folder / file_name).write_bytes(gzip.compress(data, compresslevel=1, mtime=1))
        assert hashlib.md5((folder / file_name).read_bytes()).hexdigest() != fashion_mnist.FILES[key][1]
    monkeypatch.setattr(fashion_mnist, 'RAW_MD5', raw)
    monkeypatch.setattr(fashion_mnist, 'SYSTEM_FOLDERS', (str(folder),))
    return arrays, folder


def test_a_recompressed_system_copy_is_accepted_by_its_contents_checksums(system_copy, tmp_path, capsys):
    arrays, folder = system_copy
    data = fashion_mnist.load_fashion_mnist(tmp_path / 'data')
    np.testing.assert_array_equal(data.train_images, arrays['train_images'])
    line, = capsys.readouterr().out.strip().splitlines()
    assert line.startswith(f'Fashion-MNIST from the system copy in {folder}: 40 training')
    assert not (tmp_path / 'data' / 'fashion-mnist').exists(), 'nothing is copied or downloaded'


def test_the_cache_comes_before_the_system_copy(system_copy, small_fashion_mnist, tmp_path, capsys):
    _, source = small_fashion_mnist
    cache = tmp_path / 'data' / 'fashion-mnist'
    cache.mkdir(parents=True)
    for file in source.iterdir():  # Zalando's own .gz files: their checksums match
        (cache / file.name).write_bytes(file.read_bytes())
    fashion_mnist.load_fashion_mnist(tmp_path / 'data')
    assert capsys.readouterr().out.startswith(f'Fashion-MNIST from the cache {cache}')


def test_a_folder_named_by_the_environment_comes_before_debians(system_copy, tmp_path, monkeypatch, capsys):
    _, folder = system_copy
    named = tmp_path / 'named'
    named.mkdir()
    for file in folder.iterdir():
        (named / file.name).write_bytes(file.read_bytes())
    monkeypatch.setenv('D2L_VIT_FASHION_MNIST', str(named))
    fashion_mnist.load_fashion_mnist(tmp_path / 'data')
    assert f'the system copy in {named}' in capsys.readouterr().out
    monkeypatch.setenv('D2L_VIT_FASHION_MNIST', str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f'D2L_VIT_FASHION_MNIST={tmp_path} does not hold'):
        fashion_mnist.load_fashion_mnist(tmp_path / 'data')


@pytest.mark.parametrize('damage', ['changed', 'truncated'])
def test_a_damaged_system_copy_is_refused_naming_the_file_and_the_fix(system_copy, tmp_path, damage):
    _, folder = system_copy
    path = folder / fashion_mnist.FILES['val_images'][0]
    data = gzip.decompress(path.read_bytes())
    if damage == 'changed':  # a valid gzip of other contents
        path.write_bytes(gzip.compress(data[:-1] + bytes([data[-1] ^ 1])))
        expected = 'neither its MD5 checksum nor that of its contents'
    else:
        path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
        expected = 'it is not a readable gzip file'
    with pytest.raises(download.CorruptDataError,
                       match=f'{path} is corrupt: {expected}.*Reinstall it'):
        fashion_mnist.load_fashion_mnist(tmp_path / 'data')


def test_without_any_copy_the_standin_is_used(tmp_path, capsys):
    assert fashion_mnist.SYSTEM_FOLDERS == ()  # conftest hides the machine's copy
    assert fashion_mnist.load_fashion_mnist(tmp_path).name.startswith('UCI digits')
    assert 'not available offline' in capsys.readouterr().out


@pytest.mark.skipif(not all(os.path.exists(os.path.join('/usr/share/datasets/fashion-mnist', f))
                            for f, _ in fashion_mnist.FILES.values()),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_debians_copy_is_the_real_fashion_mnist(monkeypatch, tmp_path):
    monkeypatch.setattr(fashion_mnist, 'SYSTEM_FOLDERS', ('/usr/share/datasets/fashion-mnist',))
    data = fashion_mnist.load_fashion_mnist(tmp_path)
    assert data.name == 'Fashion-MNIST' and data.train_images.shape == (60000, 28, 28)
    assert data.val_images.shape == (10000, 28, 28)
    assert abs(data.train_images.mean() / 255 - 0.2860) < 1e-4
