"""The journal's record format (journal.py appends and scans them): one finished video or failure each.

Record: magic "C3DJ", version (u8), kind (u8: 1 video, 2 failure), payload length (u32), CRC32 of
the payload (u32); payload: JSON length (u32), JSON, then the float32 features of each layer.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from typing import Mapping, Optional

import numpy as np

MAGIC = b"C3DJ"
HEADER = struct.Struct("<4sBBII")
VIDEO, FAILURE = 1, 2


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


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


_ENCODER = json.JSONEncoder(default=_plain)  # one encoder: json.dumps(default=...) builds one per call


def video_meta(key: str, facts: Mapping, features: Mapping[str, np.ndarray], extra: Optional[Mapping]
           ) -> tuple[dict, list]:
    """A video record's metadata and its float32 buffers."""
    layers = list(features)
    blobs = [np.ascontiguousarray(features[n], dtype="<f4").reshape(-1) for n in layers]
    meta = {"key": key, "facts": facts if isinstance(facts, dict) else dict(facts), "layers": layers,
            "dims": [blob.size for blob in blobs], **(extra or {})}
    return meta, blobs


def encode(kind: int, meta: dict, blobs: list) -> tuple[list, int]:
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
    return b"".join(encode(VIDEO, *video_meta(key, facts, features, None))[0])


def read_meta(payload: bytes) -> dict:
    """The JSON metadata at the head of a record's payload."""
    (size,) = struct.unpack_from("<I", payload)
    return json.loads(payload[4: 4 + size])


def payload_layers(payload: bytes, meta: Mapping) -> dict[str, np.ndarray]:
    """The float32 arrays of a video record's payload, by layer (views of `payload`)."""
    offset = 4 + struct.unpack_from("<I", payload)[0]
    out = {}
    for name, dim in zip(meta["layers"], meta["dims"]):
        out[name] = np.frombuffer(payload, dtype="<f4", count=dim, offset=offset)
        offset += 4 * dim
    return out


def decode_video(record: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """A whole video record (encode_video's) back: its metadata and its layers' arrays."""
    payload = record[HEADER.size:]
    meta = read_meta(payload)
    return meta, payload_layers(payload, meta)


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
