"""Fetching a data set's archive: from a copy already in the data root, or from a mirror, never a hang.

torchvision's public helpers do the work (``download_and_extract_archive`` checks the archive's md5,
``extract_archive`` unpacks it); this module adds what a shared, possibly offline cluster needs: a
bounded socket timeout, ``data.mirror`` (a base URL that replaces torchvision's download locations),
one clear error when nothing can be fetched, and files that appear whole or not at all.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.error import HTTPError, URLError

from vae_lab.errors import DataNotFoundError

#: Seconds a connection attempt or a read may wait for the server before the download gives up.
DOWNLOAD_TIMEOUT_S = 30.0


def base_url(mirror: str) -> str:
    """``data.mirror`` as a base URL that file names are appended to (torchvision's mirrors end in ``/``)."""
    return mirror if mirror.endswith("/") else mirror + "/"


@contextmanager
def socket_timeout(seconds: float) -> Iterator[None]:
    """Bound every socket operation of urllib (which torchvision's downloads use) by ``seconds``:
    an unreachable host fails after that long instead of hanging; the previous default is restored."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _reason(error: BaseException) -> str:
    """What went wrong with one URL, in words."""
    if isinstance(error, HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, URLError):
        error = error.reason if isinstance(error.reason, BaseException) else error
    if isinstance(error, TimeoutError):
        return f"no answer within {DOWNLOAD_TIMEOUT_S:g} s"
    if isinstance(error, RuntimeError):  # torchvision's "File not found or corrupted."
        return "the file it served does not have the official md5 (a damaged or foreign file)"
    return str(getattr(error, "strerror", None) or error)


def fetch_archive(urls: Sequence[str], filename: str, md5: str, destination: Path, produced: Sequence[str]) -> None:
    """Put the files ``produced`` (paths relative to ``destination``) there by extracting the archive
    ``filename``: the copy at ``destination/filename`` when its md5 is ``md5`` (no network), otherwise
    the first of ``urls`` that serves a file with that md5, kept beside the data as torchvision does.

    Everything is downloaded and extracted in a temporary folder inside ``destination`` and moved
    into place with ``os.replace``, so an interrupted download never leaves a half-written file
    where the data are read. Only files that are not there yet are moved in: a file already there is
    kept as it is (and verified afterwards). Raises :class:`DataNotFoundError` listing every URL
    tried and why it failed, with the fix, when no URL serves the archive.
    """
    from torchvision.datasets.utils import check_integrity, download_and_extract_archive, extract_archive

    destination.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=destination, prefix=".download-") as scratch_name:
        scratch = Path(scratch_name)
        archive = destination / filename
        if check_integrity(str(archive), md5):
            extract_archive(str(archive), str(scratch))
        else:
            failures = []
            with socket_timeout(DOWNLOAD_TIMEOUT_S):
                for url in urls:
                    try:
                        download_and_extract_archive(url, str(scratch), filename=filename, md5=md5)
                        break
                    except (OSError, RuntimeError) as error:  # URLError, refused, timed out, wrong md5
                        failures.append(f"  - {url}: {_reason(error)}")
                else:
                    listing = "\n".join(failures)
                    raise DataNotFoundError(
                        f"data.download=true could not fetch {filename}; tried\n{listing}\nNo data file was written. "
                        f"On a machine without network access, copy the data set's files into {destination} by "
                        "hand, or set data.mirror=<base URL> to a mirror this machine can reach (the file name is "
                        "appended to it)."
                    )
            os.replace(scratch / filename, archive)
        for relative in produced:
            target = destination / relative
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(scratch / relative, target)
