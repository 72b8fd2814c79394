"""An append-only, checksummed journal of finished videos and failures, beside the feature file.

HDF5 is not crash-safe: a process killed while it writes can leave the whole file unreadable. So a
run never modifies `out.h5` in place. Each finished video is appended to `out.h5.journal` as one
record and fsynced; a record cut short by a kill fails its length or CRC check and is dropped when
the journal is next opened (only that video is redone). At the end of a run (or on Ctrl-C/SIGTERM)
the journal is folded into a new feature file that atomically replaces the old one.

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

MAGIC = b"C3DJ"
HEADER = struct.Struct("<4sBBII")
VIDEO, FAILURE = 1, 2


class JournalBusy(Exception):
    """Another process holds the journal (two runs into one output)."""


@dataclass
class Record:
    kind: int
    meta: dict    # video: key, facts, layers, dims; failure: key, stage, error
    offset: int   # where the payload starts in the journal (features are read when needed)
    length: int


class Journal:
    """The journal of one feature file, locked for this process while it is open."""

    def __init__(self, path: str):
        self.path = path
        self._file = open(path, "a+b")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise JournalBusy(f"{path} is in use by another c3d-extract process") from None
        self.records, valid_end = self._read_valid()
        self._file.seek(0, os.SEEK_END)
        if self._file.tell() != valid_end:  # a record cut short by a kill: drop its bytes
            self._file.truncate(valid_end)
            os.fsync(self._file.fileno())

    def _read_valid(self) -> tuple[list[Record], int]:
        """Scan record by record (memory O(one record)); stop at the first torn or corrupt one."""
        self._file.seek(0)
        records, pos = [], 0
        while True:
            header = self._file.read(HEADER.size)
            if len(header) < HEADER.size:
                break
            magic, version, kind, length, crc = HEADER.unpack(header)
            if magic != MAGIC or version != 1:
                break
            payload = self._file.read(length)
            if len(payload) < length or zlib.crc32(payload) != crc:
                break
            records.append(Record(kind, _meta(payload), pos + HEADER.size, length))
            pos += HEADER.size + length
        return records, pos

    def append_video(self, key: str, facts: Mapping, features: Mapping[str, np.ndarray],
                     extra: Optional[Mapping] = None) -> None:
        """One finished video: its facts, named float32 arrays (flattened) and any extra metadata."""
        layers = list(features)
        meta = {"key": key, "facts": dict(facts), "layers": layers,
                "dims": [int(np.asarray(features[n]).size) for n in layers], **(extra or {})}
        blobs = b"".join(np.ascontiguousarray(features[n], dtype="<f4").tobytes() for n in layers)
        self._append(VIDEO, meta, blobs)

    def append_failure(self, key: str, stage: str, error: str) -> None:
        self._append(FAILURE, {"key": key, "stage": stage, "error": error}, b"")

    def _append(self, kind: int, meta: dict, blobs: bytes) -> None:
        text = json.dumps(meta, default=_plain).encode()
        payload = struct.pack("<I", len(text)) + text + blobs
        self._file.seek(0, os.SEEK_END)
        start = self._file.tell()
        self._file.write(HEADER.pack(MAGIC, 1, kind, len(payload), zlib.crc32(payload)) + payload)
        self._file.flush()
        os.fsync(self._file.fileno())  # durable before the video counts as done
        self.records.append(Record(kind, meta, start + HEADER.size, len(payload)))

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
