"""An append-only, checksummed journal of finished videos and failures, beside the feature file.

HDF5 is not crash-safe: a process killed while it writes can leave the whole file unreadable. So a
run never modifies `out.h5` in place. Each finished video is appended to `out.h5.journal` as one
record and fsynced; a record cut short by a kill fails its length or CRC check and is dropped when
the journal is next opened (only that video is redone). At the end of a run (or on Ctrl-C/SIGTERM)
the journal is folded into a new feature file that atomically replaces the old one.

Group commit: with `sync=False` a record is kept in memory; `sync()` then writes every such record
with one write and makes them durable with one fsync (an engine that absorbs thousands of videos a
second cannot pay a write and an fsync each). `sync(wait=False)` does the write and the fsync in a
background thread while the caller goes on, and returns the group before it, durable by then. A kill
before a group's fsync returned loses that group (its videos are redone), never an earlier one.

The record format is journal_format.py's; reading a journal back and skipping damaged records,
journal_scan.py's.
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading
from typing import Iterator, Mapping, Optional

import numpy as np

from c3d_extract.errors import Refused
from c3d_extract.featurefile.journal_format import (FAILURE, HEADER, MAGIC, VIDEO, Record, encode,
                                                    payload_layers, video_meta)
from c3d_extract.featurefile.journal_scan import damage_report, read_valid


class JournalBusy(Refused):
    """Another process holds the journal (two runs into one output)."""


class Journal:
    """The journal of one feature file, locked for this process while it is open."""

    def __init__(self, path: str):
        self.path = path
        self._file = open(path, "a+b", buffering=0)  # unbuffered: a failed write leaves nothing pending
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise JournalBusy(f"{path} is in use by another c3d-extract process") from None
        self._unsynced: list = []  # the buffers of the records not yet written (sync=False)
        self._unsynced_records = 0
        self._flying: Optional[_Flight] = None  # the group written and being fsynced in the background
        self.records, valid_end, self.damage = read_valid(self._file)
        self._file.seek(0, os.SEEK_END)
        if self._file.tell() != valid_end:  # a record cut short by a kill: drop its bytes
            self._file.truncate(valid_end)
            os.fsync(self._file.fileno())
        self._end = valid_end  # where the next record begins (after the unsynced ones)

    def damage_report(self) -> str:
        """One line on the damaged records: where they are and what is computed again."""
        return damage_report(self.damage, len(self.records))

    def append_video(self, key: str, facts: Mapping, features: Mapping[str, np.ndarray],
                     extra: Optional[Mapping] = None, sync: bool = True) -> None:
        """One finished video: its facts, named float32 arrays (flattened) and any extra metadata.
        Without `sync` the arrays are held, not copied, until the group is written: they must not
        change before sync()."""
        self._append(VIDEO, *video_meta(key, facts, features, extra), sync)

    def append_failure(self, key: str, stage: str, error: str, sync: bool = True) -> None:
        self._append(FAILURE, {"key": key, "stage": stage, "error": error}, [], sync)

    def _append(self, kind: int, meta: dict, blobs: list, sync: bool = True) -> None:
        """Add one record (its JSON, then the buffers `blobs`). With `sync` it is written and fsynced at
        once (with any unsynced before it); without, it waits in memory for sync()."""
        pieces, length = encode(kind, meta, blobs)
        self._add(pieces, Record(kind, meta, self._end + HEADER.size, length), sync)

    def append_record(self, record: bytes, sync: bool = True) -> None:
        """Add one whole record made elsewhere (encode_video: on a Ray forward actor), as it is: its
        checksum was computed where it was made, and its metadata is not parsed here."""
        magic, version, kind, length, _ = HEADER.unpack_from(record)
        if magic != MAGIC or version != 1 or length != len(record) - HEADER.size:
            raise ValueError(f"{self.path}: not a whole journal record ({len(record)} bytes)")
        (size,) = struct.unpack_from("<I", record, HEADER.size)
        text = record[HEADER.size + 4: HEADER.size + 4 + size]
        self._add([record], Record(kind, text, self._end + HEADER.size, length), sync)

    def _add(self, pieces: list, record: Record, sync: bool) -> None:
        self._unsynced += pieces
        self.records.append(record)
        self._end += HEADER.size + record.length
        self._unsynced_records += 1
        if sync:
            self.sync()  # durable before the video counts as done

    def sync(self, wait: bool = True) -> list[Record]:
        """Write the records added since the last sync (one group) and fsync them. With `wait` every
        record is durable on return. Without, the group is written and fsynced in a background thread
        and the group synced before it (waited for) is returned: durable now. On an error (a full
        disk) the journal is cut back to where the failed group began, so no torn record is left, its
        records leave the journal, and the OSError is raised with `records` set to them (their videos
        did not count)."""
        landed = self._land()
        if not self._unsynced_records:
            return landed
        group = self.records[len(self.records) - self._unsynced_records:]
        pieces, self._unsynced, self._unsynced_records = self._unsynced, [], 0
        start = self._file.seek(0, os.SEEK_END)
        shift = start - (group[0].offset - HEADER.size)
        for record in group if shift else ():  # bytes a failed cut left before: the group goes after them
            record.offset += shift
        self._end = group[-1].offset + group[-1].length
        self._flying = _Flight(self._file.fileno(), pieces, group, start)
        if wait:
            return landed + self._land()
        self._flying.launch()
        return landed

    def _land(self) -> list[Record]:
        """The group in flight, written and fsynced (waited for, or done here); [] when none."""
        flight, self._flying = self._flying, None
        if flight is None:
            return []
        flight.finish()
        if flight.error is not None:
            self._cut(flight.begin)  # records added since keep their offsets: sync() moves them to the end then
            failed = {id(record) for record in flight.group}
            self.records = [record for record in self.records if id(record) not in failed]
            flight.error.records = flight.group  # type: ignore[attr-defined]
            raise flight.error
        return flight.group

    def _pending(self) -> list[Record]:
        return self.records[len(self.records) - self._unsynced_records:] if self._unsynced_records else []

    def _cut(self, start: int) -> None:
        try:
            self._file.truncate(start)  # shrinking needs no space
        except OSError:
            pass  # the torn record fails its check when the journal is next opened

    def features(self, record: Record) -> dict[str, np.ndarray]:
        """The layers of a video record, read back from the journal file (written first when it is
        in the group not yet synced)."""
        if self._flying is not None or (self._unsynced_records and record.offset >= self._pending()[0].offset):
            self.sync()
        self._file.seek(record.offset)
        return payload_layers(self._file.read(record.length), record.meta)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def remove(self) -> None:
        """Delete the journal (after its records were folded into the feature file)."""
        os.unlink(self.path)
        self.close()

    def close(self) -> None:
        if self._flying is not None:
            self._flying.finish()  # its error, if any, was the run's to report: the records fail their checks
            self._flying = None
        if not self._file.closed:
            self._file.close()  # releases the lock


class _Flight:
    """One group's buffers written (os.writev) and fsynced, in a thread or in the caller; an OSError
    is kept for the journal to report. The thread takes the GIL back only after each of its few system
    calls (a writev per 1024 buffers, the fsync), so it seldom waits for the driver's thread to let
    the GIL go (per-record work here, a CRC call each, made groups wait that way)."""

    def __init__(self, fd: int, pieces: list, group: list[Record], begin: int):
        self.fd, self.pieces, self.group, self.begin = fd, pieces, group, begin
        self.error: Optional[OSError] = None
        self.thread: Optional[threading.Thread] = None

    def launch(self) -> None:
        self.thread = threading.Thread(target=self._run, name="journal-fsync", daemon=True)
        self.thread.start()

    def finish(self) -> None:
        if self.thread is None:
            self._run()
        else:
            self.thread.join()

    def _run(self) -> None:
        try:
            views, at = self.pieces, 0
            while at < len(views):
                done = os.writev(self.fd, views[at:at + _IOV_MAX])
                while at < len(views) and done >= len(views[at]):  # bytes, and memoryviews cast to bytes
                    done, at = done - len(views[at]), at + 1
                if done:  # a short write ended inside this buffer
                    views[at] = views[at][done:]
            os.fsync(self.fd)
        except OSError as exc:
            self.error = exc
        self.pieces = []


_IOV_MAX = 1024  # buffers per writev (Linux's IOV_MAX)
