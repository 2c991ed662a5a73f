"""Fashion-MNIST as NumPy arrays, for both tabs, with an offline stand-in.

The loader looks for the four gzipped IDX files in this order, and says in one
line where it found them:

1. the cache folder ``<root>/fashion-mnist`` (``root`` defaults to
   ``$D2L_VIT_DATA`` or, as in d2l, ``../data``);
2. a system copy: the folder named by ``$D2L_VIT_FASHION_MNIST``, then
   Debian's package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``);
3. a download over HTTPS with short timeouts into the cache, checked against
   the published MD5 sums and moved into place only when complete;
4. without any of these (or with ``D2L_VIT_OFFLINE=1``, which forbids any
   download), the UCI handwritten digits that ship with scikit-learn: 10
   classes, 8x8 pixels, resized like Fashion-MNIST by the caller.

A file is accepted when either its own MD5 matches Zalando's published one
or the MD5 of its decompressed contents does (Debian recompressed the files).
"""
import gzip
import hashlib
import os
import pathlib

import numpy as np

from d2l_extras.data import standins
from d2l_extras.data.arrays import ImageArrays
from d2l_extras.data.download import CorruptDataError, DownloadError, data_root, fetch, md5sum

SYSTEM_ENV_VAR = 'D2L_VIT_FASHION_MNIST'
SYSTEM_FOLDERS = ('/usr/share/datasets/fashion-mnist',)  # Debian's dataset-fashion-mnist
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
# MD5 of each decompressed file, as published by Zalando Research
RAW_MD5 = {
    'train_images': 'f4a8712d7a061bf5bd6d2ca38dc4d50a',
    'train_labels': '9018921c3c673c538a1fc5bad174d6f9',
    'val_images': '8181f5470baa50b63fa0f6fddb340f0a',
    'val_labels': '15d484375f8d13e6eb1aabb0c3f46965',
}
TEXT_LABELS = ('t-shirt', 'trouser', 'pullover', 'dress', 'coat', 'sandal',
               'shirt', 'sneaker', 'bag', 'ankle boot')


def read_idx(path, md5=None, raw_md5=None, fix=None):
    """Read a gzipped IDX file (the MNIST format) into a uint8 array.

    With checksums, the file is accepted when its MD5 is ``md5`` or the MD5
    of its decompressed contents is ``raw_md5``. Raises CorruptDataError,
    naming the file and ``fix`` (by default: delete it and download it
    afresh), when it matches neither or is not a valid IDX file.
    """
    path = pathlib.Path(path)
    fix = fix or f'Delete {path} and run again to download it afresh.'
    try:
        with gzip.open(path, 'rb') as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise CorruptDataError(f'{path} is corrupt: it is not a readable gzip file '
                               f'({e}). {fix}') from e
    checked = [md5 is not None and md5sum(path) == md5,
               raw_md5 is not None and hashlib.md5(data).hexdigest() == raw_md5]
    if (md5, raw_md5) != (None, None) and not any(checked):
        raise CorruptDataError(f'{path} is corrupt: neither its MD5 checksum nor that '
                               f'of its contents matches the published one. {fix}')
    if len(data) < 4 or data[:2] != b'\0\0' or data[2] != 0x08:
        raise CorruptDataError(f'{path} is not an IDX file of unsigned bytes. {fix}')
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
    if len(data) != header + int(np.prod(shape)):
        raise CorruptDataError(f'{path} is truncated: its header announces shape '
                               f'{shape}. {fix}')
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def fetch_fashion_mnist(root=None):
    """Make sure the four Fashion-MNIST files are in the cache; return their paths.

    Raises DownloadError when a file is missing and cannot be downloaded.
    """
    folder = data_root(root) / 'fashion-mnist'
    return {key: fetch(file_name, md5, folder, MIRRORS) for key, (file_name, md5) in FILES.items()}


def system_copy():
    """The first system folder (``$D2L_VIT_FASHION_MNIST``, then Debian's)
    that holds all four files, or None."""
    named = os.environ.get(SYSTEM_ENV_VAR, '').strip()
    if named and not all((pathlib.Path(named) / f).exists() for f, _ in FILES.values()):
        raise FileNotFoundError(f'{SYSTEM_ENV_VAR}={named} does not hold the four files '
                                f'{", ".join(f for f, _ in FILES.values())}: point it at '
                                'the folder that does, or unset it')
    for folder in ((named,) if named else ()) + SYSTEM_FOLDERS:
        folder = pathlib.Path(folder)
        if all((folder / file_name).exists() for file_name, _ in FILES.values()):
            return folder
    return None


def load_fashion_mnist(root=None, verbose=True):
    """Fashion-MNIST as ImageArrays, from the cache, a system copy or a
    download (see above), or the offline stand-in; prints one line saying which."""
    cache = data_root(root) / 'fashion-mnist'
    folder, fix = cache, None
    if all((cache / file_name).exists() for file_name, _ in FILES.values()):
        source = f'the cache {cache}'
    elif (system := system_copy()) is not None:
        folder, source = system, f'the system copy in {system}'
        fix = (f'Reinstall it (apt-get install --reinstall dataset-fashion-mnist), '
               f'or set {SYSTEM_ENV_VAR} to a folder with an intact copy.')
    else:
        try:
            fetch_fashion_mnist(root)
        except DownloadError as e:
            return standins.instead_of('Fashion-MNIST', e, standins.load_digits,
                                       standins.describe, verbose)
        source = f'a download into {cache}'
    arrays = {key: read_idx(folder / file_name, md5, RAW_MD5[key], fix)
              for key, (file_name, md5) in FILES.items()}
    if verbose:
        print(f'Fashion-MNIST from {source}: {len(arrays["train_labels"]):,} training '
              f'and {len(arrays["val_labels"]):,} validation images.')
    return ImageArrays('Fashion-MNIST', arrays['train_images'],
                       arrays['train_labels'].astype(np.int64),
                       arrays['val_images'], arrays['val_labels'].astype(np.int64),
                       TEXT_LABELS, 255.0)
