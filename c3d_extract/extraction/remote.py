"""Videos that live in object storage or behind a URL (s3://, gs://, http(s)://), read through fsspec
and its filesystems (optional extras: s3fs, gcsfs, aiohttp). Listing runs in the parent; each decoder
process fetches its own objects (fetch), so many download in parallel and the parent never holds
video bytes. Torch-free: decoder processes import it.

Nothing here lets a credential out: URLs are shown and recorded without user-info or query string
(a presigned URL's signature is its query), and error texts are scrubbed of both (`redact`, `scrub`).
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from typing import IO, Callable, Optional
from urllib.parse import urlsplit, urlunsplit

from c3d_extract.errors import C3DError, UsageError

FETCH_STAGE = "fetch"  # the stage of a failure to download: the store's, not the video's (retried by a rerun)
FETCH_TRIES = 4        # a transient error (connection reset, 5xx, SlowDown) is retried this many times in all
FETCH_BACKOFF = 0.5    # seconds before the second try, doubled for each next one
READ_BYTES = 2**20     # bytes read per call while fetching: a heartbeat per MiB

# which `pip install` brings each protocol's filesystem
EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "http": "http", "https": "http"}
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def is_url(text: str) -> bool:
    """Whether an input names a remote object or prefix (a scheme://); file:// counts as a local path."""
    return bool(_URL.match(text)) and not text.lower().startswith("file://")


def local_path(text: str) -> str:
    """A file:// URL as the plain path it names; anything else unchanged."""
    return text[7:] if text.lower().startswith("file://") else text


def redact(url: str) -> str:
    """`url` without user-info, query string and fragment: what may be shown, logged or recorded."""
    if not is_url(url):
        return url
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def scrub(text: str) -> str:
    """Every URL inside a message redacted (an error of a filesystem may quote the URL it was given)."""
    return _URL_IN_TEXT.sub(lambda m: redact(m.group(0)), text)


def redact_argv(argv: list[str]) -> list[str]:
    """A command line fit to record: URLs redacted, --storage-options' value (it may hold keys) hidden."""
    out, hide = [], False
    for arg in argv:
        if hide:
            out.append("<hidden>")
            hide = False
        elif arg == "--storage-options":
            out.append(arg)
            hide = True
        elif arg.startswith("--storage-options="):
            out.append("--storage-options=<hidden>")
        else:
            out.append(redact(arg))
    return out


def protocol(url: str) -> str:
    return url.split("://", 1)[0].lower()


def filesystem(url: str, options: Optional[dict] = None, fresh: bool = False):
    """The fsspec filesystem for `url` and the path it uses for it; UsageError with the install that
    fixes it where the filesystem's package is missing. fsspec caches instances per options (a
    decoder's next object reuses its connections); `fresh` asks for a new one, which reads the
    credentials of the environment again (the listing, once per run)."""
    scheme = protocol(url)
    extra = EXTRAS.get(scheme)
    hint = f"pip install 'c3d_extract[{extra}]'" if extra else "install the fsspec filesystem for it"
    try:
        import fsspec

        fs = fsspec.filesystem(scheme, **(options or {}), **({"skip_instance_cache": True} if fresh else {}))
    except ImportError as exc:
        raise UsageError(f"{redact(url)}: reading {scheme}:// needs {exc.name or 'a package'}, which is not "
                         f"installed: {hint}") from None
    except ValueError as exc:  # fsspec knows no such protocol
        raise UsageError(f"{redact(url)}: {scheme}:// is not a protocol fsspec can read ({exc}); {hint}") from None
    return fs, (url if scheme in ("http", "https") else fs._strip_protocol(url))


def is_final(exc: BaseException) -> bool:
    """Errors another try cannot mend: a missing object, a refusal, a bad request. Anything else (a
    connection reset, a timeout, 5xx, SlowDown) is worth a retry."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, ValueError)):
        return True
    status = getattr(exc, "status", None) or getattr(exc, "code", None)
    return isinstance(status, int) and 400 <= status < 500 and status not in (408, 429)


def describe(exc: BaseException) -> str:
    """One scrubbed line for a filesystem's error."""
    if isinstance(exc, FileNotFoundError):
        return f"no such bucket ({exc})" if "bucket" in str(exc).lower() else "no such object (404)"
    if isinstance(exc, PermissionError):
        return f"access denied ({scrub(str(exc)) or 'check the credentials'})"
    text = " ".join(scrub(str(exc)).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def fetch(url: str, options: Optional[dict] = None, progress: Callable[[], None] = lambda: None,
          tries: int = FETCH_TRIES) -> "Spool":
    """The object at `url` in a Spool (a temporary file nothing can leave behind). `progress` is called after every READ_BYTES, so a stalled
    download stops the decoder's heartbeat (--timeout). Transient errors are retried with backoff;
    raises FetchError with a scrubbed reason."""
    for attempt in range(tries):
        spool = Spool()
        try:
            fs, path = filesystem(url, options)
            with fs.open(path, "rb") as source:
                copy(source, spool.file, progress)
            spool.file.flush()
            return spool
        except UsageError:
            spool.close()
            raise
        except Exception as exc:  # the filesystems raise their own kinds (aiohttp, botocore, OSError)
            spool.close()
            if is_final(exc) or attempt == tries - 1:
                tried = f" (after {attempt + 1} tries)" if attempt else ""
                raise FetchError(f"cannot fetch {redact(url)}{tried}: {describe(exc)}") from None
            time.sleep(FETCH_BACKOFF * 2**attempt)
    raise AssertionError("unreachable")


class FetchError(C3DError):
    """An object that could not be downloaded (recorded as a failure of stage `fetch`)."""


def copy(source: IO[bytes], target: IO[bytes], progress: Callable[[], None] = lambda: None) -> int:
    """Copy a stream into a file, READ_BYTES at a time, calling `progress` after each; bytes copied."""
    total = 0
    while True:
        data = source.read(READ_BYTES)
        if not data:
            return total
        target.write(data)
        total += len(data)
        progress()


class Spool:
    """A temporary file that decoders open by path and that is gone once closed: unlinked at once and
    opened as /proc/self/fd/N where Linux allows (nothing is left behind even when the process is
    killed), else a named temporary file removed on close."""

    def __init__(self) -> None:
        if os.path.isdir("/proc/self/fd"):
            self.file = tempfile.TemporaryFile(prefix="c3d-fetch-")
            self.path = f"/proc/self/fd/{self.file.fileno()}"
        else:
            self.file = tempfile.NamedTemporaryFile(prefix="c3d-fetch-")
            self.path = self.file.name

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> "Spool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
