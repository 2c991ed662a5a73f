"""Downloading a dataset's files into a cache folder, checked against their
published MD5 sums, with short timeouts, and refusing damaged copies.

``D2L_VIT_DATA`` names the cache's root (as in d2l, ``../data`` by default);
``D2L_VIT_OFFLINE=1`` forbids any download, so that a loader falls back to its
offline stand-in at once.
"""
import hashlib
import os
import pathlib
import queue
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request

from d2l_extras.run.switches import env_switch

OFFLINE_ENV_VAR = 'D2L_VIT_OFFLINE'
DATA_ENV_VAR = 'D2L_VIT_DATA'
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


def download(file_name, md5, folder, mirrors, timeout=CONNECT_TIMEOUT):
    """Download ``file_name`` into ``folder``, verified, atomically; return its path.

    Tries each of the URL prefixes ``mirrors`` in turn. ``md5=None`` is for
    files published without a checksum, which the caller must check itself.
    """
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / file_name
    errors = []
    for mirror in mirrors:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f'.{file_name}.', suffix='.part')
        try:
            with os.fdopen(fd, 'wb') as out, _open_with_deadline(mirror + file_name, timeout) as response:
                for chunk in iter(lambda: response.read(1 << 20), b''):
                    out.write(chunk)
            if md5 is not None and md5sum(tmp) != md5:
                raise DownloadError('checksum mismatch')
            os.replace(tmp, target)
            return target
        except (OSError, ValueError) as e:  # URLError and socket timeouts are OSErrors
            errors.append(f'{urllib.parse.urlsplit(mirror).netloc or mirror}: {e}')
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    raise DownloadError(f'could not download {file_name} ({"; ".join(errors)})')


def fetch(file_name, md5, folder, mirrors):
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


def try_download(what, download, url, timeout=CONNECT_TIMEOUT):
    """``download()``, which fetches ``what`` from ``url``; or None, after one
    printed line saying why not: ``D2L_VIT_OFFLINE`` forbids downloading,
    ``url``'s server does not answer within ``timeout`` seconds (asked first,
    since some clients retry for a minute), or the download fails."""
    host = urllib.parse.urlsplit(url).netloc
    why = None
    if offline_forced():
        why = f'{OFFLINE_ENV_VAR} forbids downloading'
    else:
        try:
            _open_with_deadline(f'https://{host}/', timeout).close()
        except DownloadError as e:
            # An HTTP error status (404, ...) is an answer: the server is there
            if not isinstance(e.__cause__, urllib.error.HTTPError):
                why = f'{host} does not answer ({e})'
    if why is None:
        try:
            return download()
        except (OSError, ValueError) as e:  # network errors are OSErrors
            why = f'the download failed ({e})'
    print(f'Offline: not downloading {what}, since {why}.')
    return None


def fetch_checkpoint(url, root=None):
    """The path of the file at ``url`` in ``<root>/checkpoints``, downloaded
    first when missing (``root`` as for the datasets). Published checkpoints
    come without checksums: the loader checks what it reads (an .npz is a ZIP
    archive, whose members carry CRC-32 checksums)."""
    prefix, _, file_name = url.rpartition('/')
    return fetch(file_name, None, data_root(root) / 'checkpoints', (prefix + '/',))
