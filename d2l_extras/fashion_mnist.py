"""Fashion-MNIST as NumPy arrays, for both tabs, with an offline stand-in.

The original IDX files are kept, gzipped as published, in a cache folder
(``<root>/fashion-mnist``; ``root`` defaults to ``$D2L_VIT_DATA`` or, as in d2l,
``../data``). Missing files are downloaded over HTTPS with short timeouts, checked
against the published MD5 sums and moved into place only when complete, so an
interrupted download never leaves a corrupt cache.

Without the files and without a network (or with ``D2L_VIT_OFFLINE=1``, which
forbids any download), the loader says so in one line and returns the UCI
handwritten digits that ship with scikit-learn instead: 10 classes, 8x8 pixels,
resized like Fashion-MNIST by the caller.
"""
import gzip
import hashlib
import os
import pathlib
import queue
import tempfile
import threading
import urllib.parse
import urllib.request

import numpy as np

from d2l_extras import offline_standin
from d2l_extras.env_switch import env_switch
from d2l_extras.image_arrays import ImageArrays

OFFLINE_ENV_VAR = 'D2L_VIT_OFFLINE'
DATA_ENV_VAR = 'D2L_VIT_DATA'
MIRRORS = (
    'https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/',
    'https://storage.googleapis.com/tensorflow/tf-keras-datasets/',
)
# (file name, MD5 as published by Zalando Research and used by torchvision)
FILES = {
    'train_images': ('train-images-idx3-ubyte.gz', '8d4fb7e6c68d591d4c3dfef9ec88bf0d'),
    'train_labels': ('train-labels-idx1-ubyte.gz', '25c81989df183df01b3e8a0aad5dffbe'),
    'val_images': ('t10k-images-idx3-ubyte.gz', 'bef4ecab320f06d8554ea6380940ec79'),
    'val_labels': ('t10k-labels-idx1-ubyte.gz', 'bb300cfdad3c16e7a12a480ee83cd310'),
}
TEXT_LABELS = ('t-shirt', 'trouser', 'pullover', 'dress', 'coat', 'sandal',
               'shirt', 'sneaker', 'bag', 'ankle boot')
CONNECT_TIMEOUT = 5.0  # seconds for name lookup, connection and first byte
READ_TIMEOUT = 5.0  # seconds of silence tolerated while reading a file


class CorruptDataError(ValueError):
    """A cached data file is damaged; the message names it and the fix."""


class DownloadError(OSError):
    """A file could not be downloaded from any mirror."""


def data_root(root=None):
    """The folder that holds the datasets: ``root``, else ``$D2L_VIT_DATA``,
    else ``../data`` as in d2l."""
    if root is None:
        root = os.environ.get(DATA_ENV_VAR) or os.path.join('..', 'data')
    return pathlib.Path(root).expanduser()


def offline_forced():
    return env_switch(OFFLINE_ENV_VAR, unset_means=False)


def md5sum(path):
    digest = hashlib.md5()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def _open_with_deadline(url, timeout):
    """urlopen, but give up after ``timeout`` seconds even in the name lookup,
    which the socket timeout does not cover."""
    result = queue.Queue(maxsize=1)

    def target():
        try:
            result.put(urllib.request.urlopen(url, timeout=READ_TIMEOUT))
        except Exception as e:  # handed to the caller below
            result.put(e)

    threading.Thread(target=target, daemon=True).start()
    try:
        response = result.get(timeout=timeout)
    except queue.Empty:
        raise DownloadError(f'no answer within {timeout:.0f} s') from None
    if isinstance(response, Exception):
        raise DownloadError(getattr(response, 'reason', response)) from response
    return response


def download(file_name, md5, folder, mirrors=None, timeout=CONNECT_TIMEOUT):
    """Download ``file_name`` into ``folder``, verified, atomically; return its path.

    Tries each mirror (default: MIRRORS) in turn.
    """
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / file_name
    errors = []
    for mirror in mirrors or MIRRORS:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f'.{file_name}.', suffix='.part')
        try:
            with os.fdopen(fd, 'wb') as out, _open_with_deadline(mirror + file_name, timeout) as response:
                for chunk in iter(lambda: response.read(1 << 20), b''):
                    out.write(chunk)
            if md5sum(tmp) != md5:
                raise DownloadError('checksum mismatch')
            os.replace(tmp, target)
            return target
        except (OSError, ValueError) as e:  # URLError and socket timeouts are OSErrors
            errors.append(f'{urllib.parse.urlsplit(mirror).netloc or mirror}: {e}')
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    raise DownloadError(f'could not download {file_name} ({"; ".join(errors)})')


def read_idx(path, md5=None):
    """Read a gzipped IDX file (the MNIST format) into a uint8 array.

    Raises CorruptDataError, naming the file and the fix, when the file does
    not match its checksum or is not a valid IDX file.
    """
    path = pathlib.Path(path)
    fix = f'Delete {path} and run again to download it afresh.'
    if md5 is not None and md5sum(path) != md5:
        raise CorruptDataError(f'{path} is corrupt: its MD5 checksum does not '
                               f'match the published one. {fix}')
    try:
        with gzip.open(path, 'rb') as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise CorruptDataError(f'{path} is not a readable gzip file ({e}). {fix}') from e
    if len(data) < 4 or data[:2] != b'\0\0' or data[2] != 0x08:
        raise CorruptDataError(f'{path} is not an IDX file of unsigned bytes. {fix}')
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
    if len(data) != header + int(np.prod(shape)):
        raise CorruptDataError(f'{path} is truncated: its header announces shape '
                               f'{shape}. {fix}')
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def fetch(file_name, md5, folder, mirrors=None):
    """The path of ``file_name`` in the cache ``folder``, downloaded first when
    it is missing.

    Raises DownloadError when it cannot be downloaded, or when
    ``D2L_VIT_OFFLINE`` forbids downloading.
    """
    path = pathlib.Path(folder) / file_name
    if not path.exists():
        if offline_forced():
            raise DownloadError(f'{path} is missing and {OFFLINE_ENV_VAR} '
                                'forbids downloading it')
        download(file_name, md5, folder, mirrors)
    return path


def fetch_fashion_mnist(root=None):
    """Make sure the four Fashion-MNIST files are in the cache; return their paths.

    Raises DownloadError when a file is missing and cannot be downloaded.
    """
    folder = data_root(root) / 'fashion-mnist'
    return {key: fetch(file_name, md5, folder) for key, (file_name, md5) in FILES.items()}


def load_fashion_mnist(root=None, verbose=True):
    """Fashion-MNIST as ImageArrays; the offline stand-in if it cannot be had."""
    try:
        paths = fetch_fashion_mnist(root)
    except DownloadError as e:
        standin = offline_standin.load_digits()
        if verbose:
            print(f'Fashion-MNIST is not available offline ({e}); using the '
                  f'stand-in: {offline_standin.describe(standin)}.')
        return standin
    arrays = {key: read_idx(paths[key], FILES[key][1]) for key in FILES}
    return ImageArrays('Fashion-MNIST', arrays['train_images'],
                       arrays['train_labels'].astype(np.int64),
                       arrays['val_images'], arrays['val_labels'].astype(np.int64),
                       TEXT_LABELS, 255.0)
