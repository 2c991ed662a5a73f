"""CIFAR-10 as NumPy arrays, for both tabs, with an offline stand-in.

The official archive (the "python version", 163 MB) is kept as published in a
cache folder (``<root>/cifar-10``; ``root`` defaults to ``$D2L_VIT_DATA`` or, as
in d2l, ``../data``). When it is missing it is downloaded over HTTPS with short
timeouts, checked against the published MD5 sum and moved into place only
when complete, exactly as the Fashion-MNIST files are (``data.download``).

The archive holds six batch files, Python pickles of dicts with the images as
a (10000, 3072) uint8 array under ``b'data'`` (the red, green and blue planes
of each 32x32 image, row by row) and the classes under ``b'labels'``. A pickle
can run any code when loaded, so we read them with an unpickler that builds
only what these files hold, NumPy arrays besides Python's own containers, and
refuses everything else.

Without the archive and without a network (or with ``D2L_VIT_OFFLINE=1``, which
forbids any download), the loader says so in one line and returns a stand-in
that ships with scikit-learn: the UCI handwritten digits, each drawn in a
random colour on a random background colour, at 32x32 pixels.
"""
import io
import pickle
import tarfile

import numpy as np

from d2l_extras.data import standins
from d2l_extras.data.download import CorruptDataError, DownloadError, data_root, fetch, md5sum
from d2l_extras.data.arrays import ImageArrays

MIRRORS = ('https://www.cs.toronto.edu/~kriz/',)
# (file name, MD5 as published by its authors and used by torchvision)
ARCHIVE = ('cifar-10-python.tar.gz', 'c58f30108f718f92721af3b95e74349a')
FOLDER = 'cifar-10-batches-py'  # the folder inside the archive
TRAIN_BATCHES = tuple(f'data_batch_{i}' for i in range(1, 6))
VAL_BATCHES = ('test_batch',)
TEXT_LABELS = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog',
               'horse', 'ship', 'truck')
IMAGE_SHAPE = (3, 32, 32)  # how each row of b'data' is laid out


class _BatchUnpickler(pickle.Unpickler):
    """Builds the dicts, lists, bytes, numbers and NumPy arrays of a CIFAR
    batch file and refuses any other class or function, so that a tampered
    file cannot run code."""
    _NUMPY = {('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
              ('numpy', 'ndarray'), ('numpy', 'dtype')}

    def find_class(self, module, name):
        if (module, name) not in self._NUMPY:
            raise pickle.UnpicklingError(f'{module}.{name} is not part of a CIFAR-10 batch')
        if name == '_reconstruct':
            return np.ndarray.__reduce__(np.zeros(0))[0]  # this NumPy's _reconstruct
        return getattr(np, name)


def read_batch(data, name, fix):
    """Images (N, 32, 32, 3) and labels (N,) of one pickled batch file."""
    try:
        # The files were pickled by Python 2: its strings are read as bytes
        batch = _BatchUnpickler(io.BytesIO(data), encoding='bytes').load()
    except Exception as e:  # any unpickling failure means a damaged file
        raise CorruptDataError(f'{name} is not a readable CIFAR-10 batch ({e}). {fix}') from e
    images = batch.get(b'data') if isinstance(batch, dict) else None
    labels = np.asarray(batch.get(b'labels', []) if isinstance(batch, dict) else [])
    row = int(np.prod(IMAGE_SHAPE))
    if (not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2
            or images.shape[1] != row or labels.shape != (len(images),)
            or not np.isin(labels, np.arange(len(TEXT_LABELS))).all()):
        raise CorruptDataError(f'{name} does not hold (N, {row}) uint8 images and N labels '
                               f'in 0..{len(TEXT_LABELS) - 1}. {fix}')
    images = images.reshape(-1, *IMAGE_SHAPE).transpose(0, 2, 3, 1)  # NCHW -> NHWC
    return np.ascontiguousarray(images), labels.astype(np.int64)


def read_archive(path, md5=None):
    """Read the training and validation (test) batches from the archive.

    Raises CorruptDataError, naming the file and the fix, when the archive
    does not match its checksum or does not hold valid batches.
    """
    fix = f'Delete {path} and run again to download it afresh.'
    if md5 is not None and md5sum(path) != md5:
        raise CorruptDataError(f'{path} is corrupt: its MD5 checksum does not '
                               f'match the published one. {fix}')
    parts = {}
    try:
        with tarfile.open(path, 'r:gz') as archive:
            for name in TRAIN_BATCHES + VAL_BATCHES:
                member = archive.extractfile(f'{FOLDER}/{name}')
                parts[name] = read_batch(member.read(), f'{path}:{FOLDER}/{name}', fix)
    except (tarfile.TarError, OSError, EOFError, KeyError) as e:
        raise CorruptDataError(f'{path} is not a readable CIFAR-10 archive ({e}). {fix}') from e

    def join(names):
        return (np.concatenate([parts[n][0] for n in names]),
                np.concatenate([parts[n][1] for n in names]))

    return join(TRAIN_BATCHES), join(VAL_BATCHES)


def fetch_cifar10(root=None):
    """Make sure the archive is in the cache; return its path.

    Raises DownloadError when it is missing and cannot be downloaded.
    """
    file_name, md5 = ARCHIVE
    return fetch(file_name, md5, data_root(root) / 'cifar-10', mirrors=MIRRORS)


def load_cifar10(root=None, verbose=True):
    """CIFAR-10 as ImageArrays of (N, 32, 32, 3) uint8 images; the offline
    stand-in if it cannot be had."""
    try:
        path = fetch_cifar10(root)
    except DownloadError as e:
        return standins.instead_of('CIFAR-10', e, standins.load_colour_digits,
                                   standins.describe_colour_digits, verbose)
    (train_images, train_labels), (val_images, val_labels) = read_archive(path, ARCHIVE[1])
    return ImageArrays('CIFAR-10', train_images, train_labels, val_images, val_labels,
                       TEXT_LABELS, 255.0)
