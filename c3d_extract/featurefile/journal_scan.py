"""Reading a journal back when it is opened: its valid records, and the damage between them.

A record cut short at the end (a kill while it was written) is dropped; a damaged one in the middle
(a flipped bit, a bad sector: its length or CRC check fails) is skipped, noted as Damage, and the
scan goes on at the next valid record, so one bad record costs one video, not those after it.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Optional

from c3d_extract.featurefile.journal_format import HEADER, MAGIC, Record, read_meta


@dataclass
class Damage:
    """A stretch of the journal that holds no valid record (a flipped bit, a bad sector)."""

    offset: int
    key: Optional[str]  # the video it held, when its metadata can still be read


def record_at(file: BinaryIO, pos: int, size: int) -> tuple[Optional[Record], bool]:
    """(the valid record at `pos` or None, whether the bytes there reach past the end of the file)."""
    file.seek(pos)
    header = file.read(HEADER.size)
    if len(header) < HEADER.size:
        return None, True
    magic, version, kind, length, crc = HEADER.unpack(header)
    if magic != MAGIC or version != 1:
        return None, False
    if pos + HEADER.size + length > size:
        return None, True
    payload = file.read(length)
    if zlib.crc32(payload) != crc:
        return None, False
    try:
        return Record(kind, read_meta(payload), pos + HEADER.size, length), False
    except (ValueError, struct.error):
        return None, False


def next_valid(file: BinaryIO, start: int, size: int) -> Optional[int]:
    """Where the next valid record begins after `start` (a scan for MAGIC, 1 MiB at a time)."""
    pos = start
    while pos < size:
        file.seek(pos)
        window = file.read(1 << 20)
        at = window.find(MAGIC)
        while at >= 0:
            if record_at(file, pos + at, size)[0] is not None:
                return pos + at
            at = window.find(MAGIC, at + 1)
        pos += max(1, len(window) - len(MAGIC) + 1)
    return None


def read_valid(file: BinaryIO) -> tuple[list[Record], int, list[Damage]]:
    """Scan record by record (memory O(one record)): (the valid records, where the valid part ends,
    the damaged stretches skipped)."""
    size = os.fstat(file.fileno()).st_size
    records: list[Record] = []
    damage: list[Damage] = []
    pos = 0
    while pos < size:
        record, short = record_at(file, pos, size)
        if record is not None:
            records.append(record)
            pos = record.offset + record.length
            continue
        following = next_valid(file, pos + 1, size)
        if following is None and short:
            break  # the last record, cut short by a kill while it was written
        damage.append(Damage(pos, damaged_key(file, pos)))
        if following is None:
            break
        pos = following
    return records, pos, damage


def damaged_key(file: BinaryIO, pos: int) -> Optional[str]:
    """The video a damaged record held, when its JSON can still be read."""
    file.seek(pos + HEADER.size)
    head = file.read(4)
    try:
        head += file.read(min(struct.unpack_from("<I", head)[0], 1 << 20))
        return str(read_meta(head)["key"])
    except (ValueError, KeyError, TypeError, struct.error):
        return None


def damage_report(damage: list[Damage], intact: int) -> str:
    """One line on the damaged records: where they are and what is computed again."""
    where = ", ".join(f"{d.offset:,}" for d in damage[:5]) + (" ..." if len(damage) > 5 else "")
    keys = [d.key for d in damage if d.key]
    named = f" ({', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''})" if keys else ""
    return (f"{len(damage)} damaged record(s) at byte {where}{named}: skipped; "
            f"{len(damage)} video(s) will be processed again ({intact} intact record(s) kept)")
