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

Record: magic "C3DJ", version (u8), kind (u8: 1 video, 2 failure), payload length (u32), CRC32 of
the payload (u32); payload: JSON length (u32), JSON, then the float32 features of each layer.
"""

from __future__ import annotations

import fcntl
import json
import os
import struct
import threading
import zlib
from dataclasses import dataclass
from typing import Iterator, Mapping, Optional

import numpy as np

from c3d_extract.errors import Refused

MAGIC = b"C3DJ"
HEADER = struct.Struct("<4sBBII")
VIDEO, FAILURE = 1, 2


class JournalBusy(Refused):
    """Another process holds the journal (two runs into one output)."""


class Record:
    """One record: its kind, its metadata (video: key, facts, layers, dims; failure: key, stage,
    error) and where its payload starts in the journal (features are read when needed). The metadata
    of a record appended whole (append_record) stays JSON text until it is first asked for: the
    driver that appends it never parses it."""

    __slots__ = ("kind", "_meta", "offset", "length")

    def __init__(self, kind: int, meta: "dict | bytes", offset: int, length: int):
        self.kind, self._meta, self.offset, self.length = kind, meta, offset, length

    @property
    def meta(self) -> dict:
        if not isinstance(self._meta, dict):
            self._meta = json.loads(self._meta)
        return self._meta


@dataclass
class Damage:
    """A stretch of the journal that holds no valid record (a flipped bit, a bad sector)."""

    offset: int
    key: Optional[str]  # the video it held, when its metadata can still be read


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
        self.damage: list[Damage] = []
        self._unsynced: list = []  # the buffers of the records not yet written (sync=False)
        self._unsynced_records = 0
        self._flying: Optional[_Flight] = None  # the group written and being fsynced in the background
        self.records, valid_end = self._read_valid()
        self._file.seek(0, os.SEEK_END)
        if self._file.tell() != valid_end:  # a record cut short by a kill: drop its bytes
            self._file.truncate(valid_end)
            os.fsync(self._file.fileno())
        self._end = valid_end  # where the next record begins (after the unsynced ones)

    def _record_at(self, pos: int, size: int) -> tuple[Optional[Record], bool]:
        """(the valid record at `pos` or None, whether the bytes there reach past the end of the file)."""
        self._file.seek(pos)
        header = self._file.read(HEADER.size)
        if len(header) < HEADER.size:
            return None, True
        magic, version, kind, length, crc = HEADER.unpack(header)
        if magic != MAGIC or version != 1:
            return None, False
        if pos + HEADER.size + length > size:
            return None, True
        payload = self._file.read(length)
        if zlib.crc32(payload) != crc:
            return None, False
        try:
            return Record(kind, _meta(payload), pos + HEADER.size, length), False
        except (ValueError, struct.error):
            return None, False

    def _next_valid(self, start: int, size: int) -> Optional[int]:
        """Where the next valid record begins after `start` (a scan for MAGIC, 1 MiB at a time)."""
        pos = start
        while pos < size:
            self._file.seek(pos)
            window = self._file.read(1 << 20)
            at = window.find(MAGIC)
            while at >= 0:
                if self._record_at(pos + at, size)[0] is not None:
                    return pos + at
                at = window.find(MAGIC, at + 1)
            pos += max(1, len(window) - len(MAGIC) + 1)
        return None

    def _read_valid(self) -> tuple[list[Record], int]:
        """Scan record by record (memory O(one record)). A record cut short at the end (a kill) is
        dropped; a damaged one is skipped, noted in self.damage, and the scan goes on after it."""
        size = os.fstat(self._file.fileno()).st_size
        records, pos = [], 0
        while pos < size:
            record, short = self._record_at(pos, size)
            if record is not None:
                records.append(record)
                pos = record.offset + record.length
                continue
            following = self._next_valid(pos + 1, size)
            if following is None and short:
                break  # the last record, cut short by a kill while it was written
            self.damage.append(Damage(pos, self._damaged_key(pos)))
            if following is None:
                break
            pos = following
        return records, pos

    def _damaged_key(self, pos: int) -> Optional[str]:
        """The video a damaged record held, when its JSON can still be read."""
        self._file.seek(pos + HEADER.size)
        head = self._file.read(4)
        try:
            head += self._file.read(min(struct.unpack_from("<I", head)[0], 1 << 20))
            return str(_meta(head)["key"])
        except (ValueError, KeyError, TypeError, struct.error):
            return None

    def damage_report(self) -> str:
        """One line on the damaged records: where they are and what is computed again."""
        where = ", ".join(f"{d.offset:,}" for d in self.damage[:5]) + (" ..." if len(self.damage) > 5 else "")
        keys = [d.key for d in self.damage if d.key]
        named = f" ({', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''})" if keys else ""
        return (f"{len(self.damage)} damaged record(s) at byte {where}{named}: skipped; "
                f"{len(self.damage)} video(s) will be processed again ({len(self.records)} intact record(s) kept)")

    def append_video(self, key: str, facts: Mapping, features: Mapping[str, np.ndarray],
                     extra: Optional[Mapping] = None, sync: bool = True) -> None:
        """One finished video: its facts, named float32 arrays (flattened) and any extra metadata.
        Without `sync` the arrays are held, not copied, until the group is written: they must not
        change before sync()."""
        self._append(VIDEO, *_video(key, facts, features, extra), sync)

    def append_failure(self, key: str, stage: str, error: str, sync: bool = True) -> None:
        self._append(FAILURE, {"key": key, "stage": stage, "error": error}, [], sync)

    def _append(self, kind: int, meta: dict, blobs: list, sync: bool = True) -> None:
        """Add one record (its JSON, then the buffers `blobs`). With `sync` it is written and fsynced at
        once (with any unsynced before it); without, it waits in memory for sync()."""
        pieces, length = _encode(kind, meta, blobs)
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
        payload = self._file.read(record.length)
        offset = 4 + struct.unpack_from("<I", payload)[0]
        out = {}
        for name, dim in zip(record.meta["layers"], record.meta["dims"]):
            out[name] = np.frombuffer(payload, dtype="<f4", count=dim, offset=offset)
            offset += 4 * dim
        return out

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


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


_ENCODER = json.JSONEncoder(default=_plain)  # one encoder: json.dumps(default=...) builds one per call
_IOV_MAX = 1024  # buffers per writev (Linux's IOV_MAX)


def _video(key: str, facts: Mapping, features: Mapping[str, np.ndarray], extra: Optional[Mapping]
           ) -> tuple[dict, list]:
    """A video record's metadata and its float32 buffers."""
    layers = list(features)
    blobs = [np.ascontiguousarray(features[n], dtype="<f4").reshape(-1) for n in layers]
    meta = {"key": key, "facts": facts if isinstance(facts, dict) else dict(facts), "layers": layers,
            "dims": [blob.size for blob in blobs], **(extra or {})}
    return meta, blobs


def _encode(kind: int, meta: dict, blobs: list) -> tuple[list, int]:
    """A record's buffers (header, JSON, then the arrays as they are, not copied) and its payload length."""
    text = _ENCODER.encode(meta).encode()
    head = struct.pack("<I", len(text)) + text
    length, crc = len(head), zlib.crc32(head)
    for blob in blobs:
        length, crc = length + blob.nbytes, zlib.crc32(blob, crc)
    return [HEADER.pack(MAGIC, 1, kind, length, crc), head, *(memoryview(blob).cast("B") for blob in blobs)], length


def encode_video(key: str, facts: Mapping, features: Mapping[str, np.ndarray]) -> bytes:
    """One video's whole record, header and checksum included, as append_video would write it. It
    does not depend on where in a journal it lands, so it can be made where the features are (a Ray
    forward actor) and appended by the one writer with Journal.append_record."""
    return b"".join(_encode(VIDEO, *_video(key, facts, features, None))[0])


def _meta(payload: bytes) -> dict:
    (size,) = struct.unpack_from("<I", payload)
    return json.loads(payload[4: 4 + size])


def journal_path(store_path: str) -> str:
    return store_path + ".journal"


def pending(store_path: str) -> Optional[int]:
    """How many records wait in a journal beside `store_path` (None when there is none)."""
    path = journal_path(store_path)
    if not os.path.exists(path):
        return None
    count, size = 0, os.path.getsize(path)
    with open(path, "rb") as handle:
        while True:
            header = handle.read(HEADER.size)
            if len(header) < HEADER.size:
                break
            magic, _, _, length, _ = HEADER.unpack(header)
            if magic != MAGIC or handle.tell() + length > size:
                break
            handle.seek(length, os.SEEK_CUR)
            count += 1
    return count
