"""The CIFAR-10 loader and colour batches: archive format, checksum, safe
unpickling, atomic download, offline stand-in, NCHW and NHWC layouts."""
import hashlib
import io
import os
import pickle
import re
import struct
import tarfile

import numpy as np
import pytest
import torch

from d2l_extras.data import cifar10, download, standins
from d2l_extras import jax as jax_lib
from d2l_extras import torch as torch_lib
from d2l_extras.data.arrays import ImageArrays
from d2l_extras.data.resize import resize_images


def py2_pickle(obj):
    """``obj`` pickled as Python 2's cPickle wrote the CIFAR-10 batches
    (protocol 2; strings and the array's raw data as Python 2 str), for dicts,
    lists, bytes, small ints and uint8 arrays. Python 3's pickle cannot write
    this: it pickles bytes and arrays through other functions."""
    def string(b):
        return b'U' + bytes([len(b)]) + b if len(b) < 256 else b'T' + struct.pack('<i', len(b)) + b

    def integer(i):
        return b'K' + bytes([i]) if 0 <= i < 256 else b'J' + struct.pack('<i', i)

    def dump(x):
        if isinstance(x, bytes):
            return string(x)
        if isinstance(x, (int, np.integer)):
            return integer(int(x))
        if isinstance(x, list):
            return b']' + (b'(' + b''.join(map(dump, x)) + b'e' if x else b'')
        if isinstance(x, dict):
            return b'}(' + b''.join(dump(k) + dump(v) for k, v in x.items()) + b'u'
        assert isinstance(x, np.ndarray) and x.dtype == np.uint8
        dtype = (b'cnumpy\ndtype\n' + string(b'u1') + integer(0) + integer(1) + b'\x87R(' +
                 integer(3) + string(b'|') + b'NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xff' + integer(0) + b'tb')
        shape = b'(' + b''.join(integer(d) for d in x.shape) + b't'
        return (b'cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n' + integer(0) + b'\x85' +
                string(b'b') + b'\x87R(' + integer(1) + shape + dtype + b'\x89' + string(x.tobytes()) + b'tb')

    return b'\x80\x02' + dump(obj) + b'.'


def archive_bytes(batches, extra=None):
    """A .tar.gz laid out as cifar-10-python.tar.gz, with these batch files."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode='w:gz') as archive:
        files = {name: py2_pickle(batch) for name, batch in batches.items()}
        files['batches.meta'] = py2_pickle({b'label_names': [n.encode() for n in cifar10.TEXT_LABELS]})
        files.update(extra or {})
        for name, data in files.items():
            info = tarfile.TarInfo(f'{cifar10.FOLDER}/{name}')
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def small_cifar10(tmp_path, monkeypatch):
    """A tiny CIFAR-10 archive in the real format (3 images per training
    batch, 4 in the test batch) in a mirror folder, and ARCHIVE pointing at
    its checksum."""
    rng = np.random.default_rng(0)
    batches = {name: {b'batch_label': name.encode(),
                      b'labels': [int(v) for v in rng.integers(0, 10, size)],
                      b'data': rng.integers(0, 256, (size, 3072)).astype(np.uint8),
                      b'filenames': [b'x.png'] * size}
               for name, size in [(name, 3) for name in cifar10.TRAIN_BATCHES] + [('test_batch', 4)]}
    data = archive_bytes(batches)
    mirror = tmp_path / 'mirror'
    mirror.mkdir()
    (mirror / cifar10.ARCHIVE[0]).write_bytes(data)
    monkeypatch.setattr(cifar10, 'ARCHIVE', (cifar10.ARCHIVE[0], hashlib.md5(data).hexdigest()))
    return batches, mirror


def cache(mirror, root):
    folder = root / 'cifar-10'
    folder.mkdir(parents=True)
    (folder / cifar10.ARCHIVE[0]).write_bytes((mirror / cifar10.ARCHIVE[0]).read_bytes())
    return folder / cifar10.ARCHIVE[0]


def test_reads_the_batches_of_a_cached_archive_as_nhwc_images(small_cifar10, tmp_path):
    batches, mirror = small_cifar10
    cache(mirror, tmp_path / 'data')
    data = cifar10.load_cifar10(tmp_path / 'data')
    assert data.name == 'CIFAR-10' and data.max_value == 255 and data.text_labels[0] == 'airplane'
    assert data.train_images.shape == (15, 32, 32, 3) and data.val_images.shape == (4, 32, 32, 3)
    assert data.train_images.dtype == np.uint8 and data.train_labels.dtype == np.int64
    np.testing.assert_array_equal(data.val_labels, batches['test_batch'][b'labels'])
    np.testing.assert_array_equal(data.train_labels[3:6], batches['data_batch_2'][b'labels'])
    # Each row of b'data' is the red, then green, then blue plane, row by row
    row = batches['data_batch_2'][b'data'][1]
    image = data.train_images[4]
    assert image[0, 0, 0] == row[0] and image[0, 1, 0] == row[1] and image[1, 0, 0] == row[32]
    assert image[0, 0, 1] == row[1024] and image[31, 31, 2] == row[3071]


def test_downloads_verifies_and_caches_the_archive(small_cifar10, tmp_path, monkeypatch):
    batches, mirror = small_cifar10
    monkeypatch.delenv('D2L_VIT_OFFLINE')
    monkeypatch.setattr(cifar10, 'MIRRORS', (mirror.as_uri() + '/',))
    data = cifar10.load_cifar10(tmp_path / 'data')
    assert data.name == 'CIFAR-10' and len(data.train_labels) == 15
    cached = [p.name for p in (tmp_path / 'data' / 'cifar-10').iterdir()]
    assert cached == [cifar10.ARCHIVE[0]]


def test_a_checksum_mismatch_names_the_file_and_the_fix(small_cifar10, tmp_path):
    _, mirror = small_cifar10
    path = cache(mirror, tmp_path / 'data')
    path.write_bytes(path.read_bytes()[:-10])  # truncated
    with pytest.raises(download.CorruptDataError,
                       match=f'{re.escape(str(path))} is corrupt: its MD5 checksum .* '
                             f'Delete {re.escape(str(path))} and run again'):
        cifar10.load_cifar10(tmp_path / 'data')


def test_a_failed_download_leaves_no_file_and_falls_back_to_the_standin(
        small_cifar10, tmp_path, monkeypatch, capsys):
    _, mirror = small_cifar10
    (mirror / cifar10.ARCHIVE[0]).write_bytes(b'not the published archive')
    monkeypatch.delenv('D2L_VIT_OFFLINE')
    monkeypatch.setattr(cifar10, 'MIRRORS', (mirror.as_uri() + '/',))
    data = cifar10.load_cifar10(tmp_path / 'data')
    assert data.name.startswith('UCI digits in colour')
    assert 'checksum mismatch' in capsys.readouterr().out
    assert list((tmp_path / 'data' / 'cifar-10').iterdir()) == []  # no partial file


def test_offline_gives_the_standin_in_one_line_and_never_touches_the_network(
        tmp_path, capsys, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError('D2L_VIT_OFFLINE=1 must not touch the network')
    monkeypatch.setattr(download.urllib.request, 'urlopen', no_network)
    data = cifar10.load_cifar10(tmp_path)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('CIFAR-10 is not available offline')
    assert 'UCI digits, each in a random colour' in lines[0] and '32x32 pixels' in lines[0]
    assert data.train_images.shape[1:] == (32, 32, 3) and data.num_classes == 10


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / 'ran'

    class Payload:
        def __reduce__(self):
            return os.system, (f'touch {marker}',)

    evil = pickle.dumps({b'data': Payload(), b'labels': [0]}, protocol=4)
    path = tmp_path / cifar10.ARCHIVE[0]
    path.write_bytes(archive_bytes({}, extra={name: evil for name in cifar10.TRAIN_BATCHES + ('test_batch',)}))
    with pytest.raises(download.CorruptDataError, match='system is not part of a CIFAR-10 batch'):
        cifar10.read_archive(path)
    assert not marker.exists()


def test_a_batch_of_the_wrong_shape_is_refused(tmp_path):
    wrong = py2_pickle({b'data': np.zeros((2, 100), np.uint8), b'labels': [0, 1]})
    path = tmp_path / cifar10.ARCHIVE[0]
    path.write_bytes(archive_bytes({}, extra={name: wrong for name in cifar10.TRAIN_BATCHES + ('test_batch',)}))
    with pytest.raises(download.CorruptDataError, match=r'data_batch_1 does not hold \(N, 3072\) uint8'):
        cifar10.read_archive(path)


def test_both_data_modules_give_the_same_colour_batches_in_their_layouts(small_cifar10, tmp_path):
    batches, mirror = small_cifar10
    cache(mirror, tmp_path / 'data')
    torch_data = torch_lib.CIFAR10(batch_size=4, root=tmp_path / 'data')
    jax_data = jax_lib.CIFAR10(batch_size=4, root=tmp_path / 'data')
    (X_t, y_t), (X_j, y_j) = next(iter(torch_data.val_dataloader())), next(iter(jax_data.val_dataloader()))
    assert X_t.shape == (4, 3, 32, 32) and X_t.dtype == torch.float32 and X_j.shape == (4, 32, 32, 3)
    expected = batches['test_batch'][b'data'].reshape(4, 3, 32, 32) / np.float32(255)
    np.testing.assert_allclose(X_t.numpy(), expected, rtol=1e-6)
    np.testing.assert_array_equal(X_t.numpy().transpose(0, 2, 3, 1), X_j)
    np.testing.assert_array_equal(y_t.numpy(), batches['test_batch'][b'labels'])
    np.testing.assert_array_equal(y_j, y_t.numpy())
    assert torch_data.text_labels(y_t[:1]) == [cifar10.TEXT_LABELS[batches['test_batch'][b'labels'][0]]]


def test_colour_images_resize_channel_by_channel_as_grayscale_ones_do():
    images = np.random.default_rng(0).random((2, 12, 10, 3)).astype(np.float32)
    resized = resize_images(images, (32, 20))
    assert resized.shape == (2, 32, 20, 3)
    for channel in range(3):
        np.testing.assert_allclose(resized[..., channel], resize_images(images[..., channel], (32, 20)),
                                   atol=1e-6)


def test_the_colour_standin_is_the_digits_split_in_colour_and_repeatable():
    digits, colour = standins.load_digits(), standins.load_colour_digits()
    assert colour.train_images.shape == (len(digits.train_labels), 32, 32, 3)
    assert colour.train_images.dtype == np.uint8 and colour.max_value == 255
    np.testing.assert_array_equal(colour.val_labels, digits.val_labels)
    np.testing.assert_array_equal(standins.load_colour_digits().train_images, colour.train_images)
    # The background (a corner) differs from image to image, and the digit
    # from its background by at least 88 levels in every channel
    corners = colour.train_images[:, 0, 0].astype(int)
    assert len(np.unique(corners, axis=0)) > 0.9 * len(corners)
    ink = resize_images(digits.train_images, 32) / 16 > 0.99
    image = colour.train_images[0].astype(int)
    assert (np.abs(image[ink[0]] - image[0, 0]) >= 88).all()


def test_smaller_training_subsets_are_nested_and_keep_the_validation_set():
    arrays = ImageArrays('numbers', np.arange(100)[:, None, None], np.arange(100),
                         np.arange(50)[:, None, None], np.arange(50), tuple('0123456789'), 1.0)
    subsets = [arrays.subset(n, 20) for n in (10, 30, None)]
    small, medium, full = (set(s.train_labels) for s in subsets)
    assert len(small) == 10 and len(medium) == 30 and small < medium < full
    for s in subsets[1:]:
        np.testing.assert_array_equal(s.val_labels, subsets[0].val_labels)
    assert len(subsets[0].val_labels) == 20
