"""Downloading one address of a checkpoint safely: resume, size and sha256 checks, atomic rename.

http(s) addresses are read with urllib (HTTP Range resumes a cut download; Google Drive share links
are turned into Drive's download address and its large-file confirmation page is answered); every
other address (s3://, gs://, file://, a plain path) goes through the remote-input code's fsspec
filesystems (c3d_extract.extraction.remote), resuming by seeking past what is already on disk.
"""

from __future__ import annotations

import html
import http.client
import http.cookiejar
import os
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Optional

from tqdm import tqdm

from c3d_extract.errors import UsageError
from c3d_extract.extraction.remote import describe, filesystem, is_final, redact
from c3d_extract.storage import StorageError, is_storage_error, sha256_of
from c3d_extract.weights.manifest import Source

TIMEOUT = 30  # seconds without data before a connection counts as dropped
BLOCK = 1 << 20
DRIVE_DOWNLOAD = "https://drive.usercontent.google.com/download"
DRIVE_HOSTS = ("drive.google.com", "docs.google.com")
_PAGE_BYTES = 1 << 20  # the most of a web page read while looking for Drive's confirmation form


class AddressError(Exception):
    """One address that did not give the file; str() is the reason, one line."""


class _Saving(Exception):
    """Writing the partial file failed (a full disk): not the network's fault, so no retry."""

    def __init__(self, error: OSError):
        super().__init__(str(error))
        self.error = error


class _Dropped(Exception):
    """A transfer cut short: worth another try, resuming from what arrived."""


def drive_download_url(url: str) -> str:
    """A Google Drive share link (…/file/d/ID/view, …/open?id=ID, …/uc?id=ID) as Drive's download
    address for file ID; any other address unchanged."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname not in DRIVE_HOSTS:
        return url
    match = re.match(r"/file/d/([\w-]+)", parts.path)
    file_id = match.group(1) if match else urllib.parse.parse_qs(parts.query).get("id", [None])[0]
    if file_id is None:
        raise AddressError("a Google Drive link without a file id (a folder link cannot be downloaded: "
                           "open it and use the link of the file)")
    return f"{DRIVE_DOWNLOAD}?{urllib.parse.urlencode({'id': file_id, 'export': 'download'})}"


def confirmation_url(page: str, base: str) -> Optional[str]:
    """Where Drive's "can't scan this file for viruses" page sends its "Download anyway" button: the
    form's action with its hidden fields (id, export, confirm, uuid), or an older page's
    `confirm=TOKEN` link; None for any other page."""
    form = re.search(r"<form[^>]*id=\"download-form\"[^>]*>(.*?)</form>", page, re.S | re.I)
    if form:
        action = re.search(r"action=\"([^\"]+)\"", form.group(0))
        fields = re.findall(r"<input[^>]*type=\"hidden\"[^>]*name=\"([^\"]+)\"[^>]*value=\"([^\"]*)\"", form.group(1))
        if action:
            target = urllib.parse.urljoin(base, html.unescape(action.group(1)))
            return f"{target}?{urllib.parse.urlencode([(k, html.unescape(v)) for k, v in fields])}"
    link = re.search(r"href=\"([^\"]*confirm=[\w-]+[^\"]*)\"", page)
    return urllib.parse.urljoin(base, html.unescape(link.group(1))) if link else None


def _title(page: str) -> str:
    found = re.search(r"<title>(.*?)</title>", page, re.S | re.I)
    return " ".join(html.unescape(found.group(1)).split())[:120] if found else "no title"


def _write(out, block: bytes) -> None:
    """Unbuffered writes: a full disk is found here, and closing the file cannot fail again."""
    try:
        view = memoryview(block)
        while view:
            view = view[out.write(view):]
    except OSError as exc:
        if is_storage_error(exc):
            raise _Saving(exc) from None
        raise


def _bar(total: Optional[int], have: int, label: str, quiet: bool) -> tqdm:
    """A progress bar with size and rate (tqdm stays quiet when stderr is not a terminal)."""
    return tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                disable=True if quiet else None, leave=True, dynamic_ncols=True)


def _copy(stream, part: Path, have: int, total: Optional[int], label: str, quiet: bool) -> None:
    with open(part, "ab" if have else "wb", buffering=0) as out, _bar(total, have, label, quiet) as bar:
        while True:
            block = stream.read(BLOCK)
            if not block:
                break
            _write(out, block)
            bar.update(len(block))
    got = part.stat().st_size
    if total is not None and got < total:
        raise _Dropped(f"connection dropped at {got:,} of {total:,} bytes")


def _http_attempt(url: str, part: Path, label: str, quiet: bool) -> None:
    """Fetch url into part, continuing from part's size when the server honours Range; answers Drive's
    confirmation page (two hops at most) and never writes a web page into the file."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    for _ in range(3):
        have = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        with opener.open(request, timeout=TIMEOUT) as response:
            if response.headers.get_content_type() == "text/html":
                page = response.read(_PAGE_BYTES).decode("utf-8", "replace")
                confirm = confirmation_url(page, response.geturl())
                if confirm is None:
                    raise AddressError(f"answered with a web page, not the file ({_title(page)!r}; a Drive "
                                       f"file over its download quota, or a link that needs a login?)")
                url = confirm
                continue
            if have and response.status != 206:
                have = 0  # the server sent the whole file again
            length = response.headers.get("Content-Length")
            total = int(length) + have if length is not None else None
            _copy(response, part, have, total, label, quiet)
            return
    raise AddressError("Google Drive asked for confirmation again and again")


def _fsspec_attempt(url: str, part: Path, label: str, quiet: bool) -> None:
    """Fetch an object (s3://, gs://, file://) into part through the remote-input filesystems."""
    fs, path = filesystem(url)
    total = int(fs.size(path))
    have = part.stat().st_size if part.exists() else 0
    if have > total:
        have = 0
    with fs.open(path, "rb") as source:
        if have:
            source.seek(have)
        _copy(source, part, have, total, label, quiet)


def _fetch(url: str, part: Path, label: str, retries: int, quiet: bool) -> None:
    """part holds the whole file from url on return; AddressError (one line) otherwise."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else "file"
    last = ""
    for _ in range(retries):
        try:
            if scheme in ("http", "https"):
                _http_attempt(url, part, label, quiet)
            else:
                _fsspec_attempt(url if "://" in url else f"file://{os.path.abspath(url)}", part, label, quiet)
            return
        except _Saving as exc:
            have = part.stat().st_size if part.exists() else 0
            raise StorageError(str(part), exc.error, f"the {have:,} bytes downloaded so far are kept in it: the "
                                                     f"next fetch resumes from there") from None
        except AddressError:
            raise
        except UsageError as exc:  # no filesystem for that protocol (a missing extra)
            raise AddressError(str(exc).split(": ", 1)[-1]) from None
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and part.exists():  # nothing left to fetch: the partial file is whole
                return
            raise AddressError(f"HTTP {exc.code} {exc.reason}") from None
        except (_Dropped, http.client.IncompleteRead, ConnectionResetError, socket.timeout, TimeoutError) as exc:
            last = str(exc) if isinstance(exc, _Dropped) else f"connection dropped ({type(exc).__name__})"
        except urllib.error.URLError as exc:
            raise AddressError(f"cannot connect ({exc.reason})") from None
        except FileNotFoundError as exc:
            raise AddressError("no such file" if scheme == "file" else describe(exc)) from None
        except Exception as exc:  # the fsspec filesystems raise their own kinds (botocore, aiohttp, OSError)
            if is_final(exc):
                raise AddressError(describe(exc)) from None
            last = describe(exc)
    raise AddressError(f"{last} ({retries} tries; {part.stat().st_size if part.exists() else 0:,} bytes kept "
                       f"for the next fetch to resume)")


def fetch_address(source: Source, folder: Path, retries: int = 3, quiet: bool = False) -> tuple[Path, str]:
    """Download `source` to folder/<its file> and return (path, sha256).

    A dropped connection resumes from where it stopped (up to `retries` times, and across calls: the
    partial file `<file>.part` is kept). The size and checksum the manifest knows (full or prefix) are
    checked before the atomic rename; a file that does not match is deleted (nothing else is touched)
    and AddressError says why.
    """
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / source.file
    part = dest.with_name(dest.name + ".part")
    origin = dest.with_name(dest.name + ".part.from")  # the address the partial file came from
    unchecked = source.size is None and not source.sha256 and not source.sha256_prefix
    if part.exists() and unchecked and (not origin.exists() or origin.read_text() != source.url):
        part.unlink()  # nothing would catch bytes of two different files: resume only from the same address
    origin.write_text(source.url)
    url = drive_download_url(source.url)
    host = urllib.parse.urlsplit(url).hostname or "local file"
    try:
        _fetch(url, part, f"{source.file} ({host})", retries, quiet)
    except AddressError:
        if not part.exists():
            origin.unlink()
        raise
    got = part.stat().st_size
    reason = None
    if source.size is not None and got != source.size:
        reason = f"got {got:,} bytes, the manifest says {source.size:,}"
    digest = sha256_of(part) if reason is None else ""
    if reason is None and ((source.sha256 and digest != source.sha256)
                           or (source.sha256_prefix and not digest.startswith(source.sha256_prefix))):
        reason = f"sha256 {digest} does not match the manifest's {source.sha256 or source.sha256_prefix + '...'}"
    if reason is not None:
        part.unlink()
        origin.unlink()
        raise AddressError(f"{reason}: refused, the download was deleted")
    os.replace(part, dest)
    origin.unlink()
    return dest, digest


_SIGNED = re.compile(r"(^|&)(x-amz-signature|signature|sig|token|access_token|key)=", re.I)


def shown(url: str) -> str:
    """An address as it may be printed and recorded: without user-info, and without its query where
    that looks like a signature or token (a presigned URL); a public query such as Dropbox's ?dl=1
    or Drive's ?id= is kept, since the address does not work without it."""
    parts = urllib.parse.urlsplit(url)
    if not parts.scheme or parts.scheme == "file":
        return url
    if _SIGNED.search(parts.query):
        return redact(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[-1], parts.path, parts.query, ""))
