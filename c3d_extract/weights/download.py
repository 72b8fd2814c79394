"""Downloading a file safely: resume with HTTP Range, size and sha256 checks, atomic rename."""

from __future__ import annotations

import http.client
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional, Sequence

from tqdm import tqdm

from c3d_extract.errors import Failure
from c3d_extract.storage import StorageError, is_storage_error, sha256_of

TIMEOUT = 30  # seconds without data before a connection counts as dropped


class DownloadError(Failure):
    """A download that failed everywhere; the message lists each address and why."""


class _Saving(Exception):
    """Writing the partial file failed (a full disk): not the network's fault, so no retry."""

    def __init__(self, error: OSError):
        super().__init__(str(error))
        self.error = error


def _attempt(url: str, part: Path, quiet: bool) -> None:
    """Fetch url into part, continuing from part's size when the server honours Range."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        if have and response.status != 206:
            have = 0  # the server sent the whole file again
        total = response.headers.get("Content-Length")
        total = int(total) + have if total is not None else None
        mode = "ab" if have else "wb"
        with open(part, mode, buffering=0) as out, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                           desc=part.name.removesuffix(".part"), disable=True if quiet else None,
                                           leave=False) as bar:
            while True:
                block = response.read(1 << 20)
                if not block:
                    break
                try:  # unbuffered: a full disk is found here, and closing the file cannot fail again
                    view = memoryview(block)
                    while view:
                        view = view[out.write(view):]
                except OSError as exc:
                    if is_storage_error(exc):
                        raise _Saving(exc) from None
                    raise
                bar.update(len(block))
        if total is not None and part.stat().st_size < total:
            raise http.client.IncompleteRead(b"", total - part.stat().st_size)


def _fetch_with_retries(url: str, part: Path, retries: int, quiet: bool, reasons: list[str]) -> bool:
    """True when `part` holds the whole file from `url`; else the reason is appended."""
    for _ in range(retries):
        try:
            _attempt(url, part, quiet)
            return True
        except _Saving as exc:
            have = part.stat().st_size if part.exists() else 0
            raise StorageError(str(part), exc.error, f"the {have:,} bytes downloaded so far are kept in it: the "
                                                     f"next fetch resumes from there") from None
        except (http.client.IncompleteRead, ConnectionResetError, socket.timeout, TimeoutError) as exc:
            reasons.append(f"{url}: connection dropped ({type(exc).__name__})")
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and part.exists():  # nothing left to fetch: the partial file is whole
                return True
            reasons.append(f"{url}: HTTP {exc.code} {exc.reason}")
            return False
        except (urllib.error.URLError, OSError) as exc:
            reasons.append(f"{url}: cannot connect ({getattr(exc, 'reason', exc)})")
            return False
    return False


def download(urls: Sequence[str], dest: Path, size: Optional[int] = None, sha256: Optional[str] = None,
             sha256_prefix: Optional[str] = None, retries: int = 3, quiet: bool = False) -> Path:
    """Download the first address that works to `dest` and return it.

    A dropped connection resumes from where it stopped (up to `retries` times per address, and
    across calls: the partial file `dest.part` is kept). The size and checksum are checked before
    the atomic rename; a mismatch removes the partial file and raises DownloadError.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    reasons: list[str] = []
    for url in urls:
        if not _fetch_with_retries(url, part, retries, quiet, reasons):
            continue
        got = part.stat().st_size
        if size is not None and got != size:
            part.unlink()
            raise DownloadError(f"{url}: got {got} bytes, expected {size}; the partial file was removed")
        digest = sha256_of(part)
        if (sha256 and digest != sha256) or (sha256_prefix and not digest.startswith(sha256_prefix)):
            part.unlink()
            raise DownloadError(f"{url}: sha256 {digest} does not match the manifest's "
                                f"{sha256 or sha256_prefix + '...'}; the download was removed")
        os.replace(part, dest)
        return dest
    raise DownloadError("; ".join(reasons) or "no address to download from")
