"""An append-only, checksummed journal of finished videos and failures, beside the feature file.

HDF5 is not crash-safe: a process killed while it writes can leave the whole file unreadable. So a
run never modifies `out.h5` in place. Each finished video is appended to `out.h5.journal` as one
record and fsynced; a record cut short by a kill fails its length or CRC check and is dropped when
the journal is next opened (only that video is redone). At the end of a run (or on Ctrl-C/SIGTERM)
the journal is folded into a new feature file that atomically replaces the old one.

Group commit: with `sync=False` a record is written but not fsynced; `sync()` then makes every such
record durable with one fsync (an engine that absorbs thousands of videos a second cannot pay an
fsync each). A kill before that fsync may lose the unsynced records (the videos are redone), never
an earlier one.

Record: magic "C3DJ", version (u8), kind (u8: 1 video, 2 failure), payload length (u32), CRC32 of
the payload (u32); payload: JSON length (u32), JSON, then the float32 features of each layer.
"""

from __future__ import annotations

import fcntl
import json
import os
import struct
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


@dataclass
class Record:
    kind: int
    meta: dict    # video: key, facts, layers, dims; failure: key, stage, error
    offset: int   # where the payload starts in the journal (features are read when needed)
    length: int


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
        self._unsynced: Optional[int] = None  # where the first record not yet fsynced begins
        self._unsynced_records = 0
        self.records, valid_end = self._read_valid()
        self._file.seek(0, os.SEEK_END)
        if self._file.tell() != valid_end:  # a record cut short by a kill: drop its bytes
            self._file.truncate(valid_end)
            os.fsync(self._file.fileno())

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
        """One finished video: its facts, named float32 arrays (flattened) and any extra metadata."""
        layers = list(features)
        meta = {"key": key, "facts": dict(facts), "layers": layers,
                "dims": [int(np.asarray(features[n]).size) for n in layers], **(extra or {})}
        blobs = b"".join(np.ascontiguousarray(features[n], dtype="<f4").tobytes() for n in layers)
        self._append(VIDEO, meta, blobs, sync)

    def append_failure(self, key: str, stage: str, error: str, sync: bool = True) -> None:
        self._append(FAILURE, {"key": key, "stage": stage, "error": error}, b"", sync)

    def _append(self, kind: int, meta: dict, blobs: bytes, sync: bool = True) -> None:
        """Write one record and fsync it (with `sync`: it and any unsynced before it). On an error (a
        full disk) the journal is cut back to where the record began, so no torn record is left, and
        the OSError is raised."""
        text = json.dumps(meta, default=_plain).encode()
        payload = struct.pack("<I", len(text)) + text + blobs
        data = memoryview(HEADER.pack(MAGIC, 1, kind, len(payload), zlib.crc32(payload)) + payload)
        start = self._file.seek(0, os.SEEK_END)
        try:
            while data:
                data = data[self._file.write(data):]
        except OSError:
            self._cut(start)
            raise
        self.records.append(Record(kind, meta, start + HEADER.size, len(payload)))
        if self._unsynced is None:
            self._unsynced = start
        self._unsynced_records += 1
        if sync:
            self.sync()  # durable before the video counts as done

    def sync(self) -> list[Record]:
        """fsync every record written since the last sync (one group): they are durable now. On an
        error the group's records are cut from the journal and the OSError is raised with
        `records` set to them (their videos did not count)."""
        if self._unsynced is None:
            return []
        group = self.records[len(self.records) - self._unsynced_records:]
        start, self._unsynced, self._unsynced_records = self._unsynced, None, 0
        try:
            os.fsync(self._file.fileno())
        except OSError as exc:
            self._cut(start)
            del self.records[len(self.records) - len(group):]
            exc.records = group  # type: ignore[attr-defined]
            raise
        return group

    def _cut(self, start: int) -> None:
        try:
            self._file.truncate(start)  # shrinking needs no space
        except OSError:
            pass  # the torn record fails its check when the journal is next opened

    def features(self, record: Record) -> dict[str, np.ndarray]:
        """The layers of a video record, read back from the journal file."""
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
        if not self._file.closed:
            self._file.close()  # releases the lock


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


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
