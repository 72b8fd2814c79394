"""Tar shards (video2dataset's and WebDataset's layout: `00000.tar` holds `000000001.mp4` beside its
`.json` and `.txt`), read front to back once, in a decoder process: each member with a video extension
is spooled to a temporary file and decoded as a video of its own. No random access, so a shard in
object storage is one streamed GET. Torch-free."""

from __future__ import annotations

import tarfile
import time
from typing import Callable, Iterator, Optional

from c3d_extract.extraction.inputs import VideoJob
from c3d_extract.extraction.remote import (FETCH_BACKOFF, FETCH_TRIES, Spool, copy, describe, filesystem,
                                          is_final, is_url, redact)


class ShardBroken(Exception):
    """The shard could not be read on from here: `stage` is fetch (the store) or open (a damaged tar)."""

    def __init__(self, stage: str, message: str):
        super().__init__(message)
        self.stage = stage


def _open(path: str, options: Optional[dict]):
    if not is_url(path):
        return open(path, "rb")
    fs, where = filesystem(path, options)
    return fs.open(where, "rb")


def members(job: VideoJob, options: Optional[dict] = None,
            progress: Callable[[], None] = lambda: None) -> Iterator[tuple[str, Spool]]:
    """(member key, Spool holding its bytes) for each video member of the shard `job`, in tar order,
    but those in `job.skip`. The caller closes each Spool. A store error is retried by reading the
    shard again from its start (members already given are passed over); raises ShardBroken when
    the shard cannot be read on (the members not given yet are then unknown)."""
    given: set[str] = set(job.skip)
    last = ""
    for attempt in range(FETCH_TRIES):
        try:
            with _open(job.path, options) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
                for member in tar:
                    progress()
                    name = member.name[2:] if member.name.startswith("./") else member.name
                    key = job.prefix + name
                    if (not member.isfile() or key in given or name.rsplit(".", 1)[-1].lower() not in job.members
                            or any(part.startswith(".") for part in name.split("/"))):
                        continue
                    spool = Spool()
                    try:
                        copy(tar.extractfile(member), spool.file, progress)
                        spool.file.flush()
                    except BaseException:
                        spool.close()
                        raise
                    given.add(key)
                    last = name
                    yield key, spool
            return
        except (tarfile.TarError, EOFError) as exc:
            after = f" after member {last}" if last else ""
            reason = "truncated" if isinstance(exc, EOFError) or "unexpected end" in str(exc) else "damaged"
            raise ShardBroken("open", f"tar shard {redact(job.path)} {reason}{after}: {exc}") from None
        except FileNotFoundError as exc:
            if not is_url(job.path):
                raise ShardBroken("open", f"tar shard {job.path}: no such file") from None
            raise ShardBroken("fetch", f"tar shard {redact(job.path)}: {describe(exc)}") from None
        except Exception as exc:  # the filesystems' own kinds: connection reset, 5xx, SlowDown
            if is_final(exc) or attempt == FETCH_TRIES - 1:
                after = f" after member {last}" if last else ""
                raise ShardBroken("fetch", f"tar shard {redact(job.path)}: reading stopped{after}: "
                                           f"{describe(exc)}") from None
            time.sleep(FETCH_BACKOFF * 2**attempt)
