"""Reading videos: PyAV (a current FFmpeg) first, decord 0.6.0 for what PyAV cannot read. Both read
sequentially in bounded chunks and turn their error traps into one clear message per file
(reference/environment.md); both say when they repaired frames instead of decoding them. PyAV reads
first because it is faster at equal pixels on every codec both read (bench/results.md, "Reader order").
"""

from __future__ import annotations

import os
import stat

from c3d_extract.extraction.decord_reader import DECORD, DecordReader
from c3d_extract.extraction.pyav_reader import PYAV, PyAVReader

DECODERS = (PYAV, DECORD)  # in the order they are tried

# PyAV first for every codec: at equal pixels (bit-identical rgb24 for 8-bit video) it is faster than
# decord on each one both read (bench/results.md, "Reader order"); decord reads what PyAV cannot open
# or decode. A video PyAV fails in midway is read again by decord from the start (decode.decode_frames).
READERS = (PyAVReader, DecordReader)
# PyAV alone for the MPEG program and transport streams: decord 0.6.0 repeats a frame in place of one
# it loses on healthy ones (its fault tolerance stops it) and drops a transport stream's first GOP,
# and cannot open MPEG-1/2 video elementary streams at all. A fallback to decord would add nothing.
MPEG_STREAM_READERS = (PyAVReader,)
SNIFF_BYTES = 4096  # enough for 8 transport stream packets whatever the first one's offset
_TS_PACKET_SIZES = (188, 192, 204)  # TS; M2TS/AVCHD (4-byte time code prefix); DVB with FEC bytes
_TS_PACKETS_NEEDED = 8  # sync bytes in a row (fewer only in a file too short to hold that many)


def _is_mpeg_stream(head: bytes) -> bool:
    """Whether `head` starts an MPEG program stream, an MPEG-1/2 video elementary stream or an MPEG
    transport stream (any of _TS_PACKET_SIZES, the first sync byte within the first packet)."""
    zeros = len(head) - len(head.lstrip(b"\0"))  # a start code may have more than two leading zeros
    if zeros >= 2 and head[zeros:zeros + 2] in (b"\x01\xba", b"\x01\xbb", b"\x01\xb3"):
        return True  # pack header, system header, sequence header
    for size in _TS_PACKET_SIZES:
        for offset in (at for at in range(min(size, len(head))) if head[at] == 0x47):  # the first sync byte
            packets = min(_TS_PACKETS_NEEDED, (len(head) - offset + size - 1) // size)
            if packets >= 3 and all(head[offset + k * size] == 0x47 for k in range(packets)):
                return True
    return False


def readers_for(path: str) -> tuple[type, ...]:
    """The readers to try on `path`, in order, chosen from its first SNIFF_BYTES bytes (one read;
    the name's extension does not count): MPEG_STREAM_READERS for an MPEG program stream (pack
    header 00 00 01 BA, or a system header 00 00 01 BB), an MPEG-1/2 video elementary stream
    (sequence header 00 00 01 B3) or an MPEG transport stream (sync byte 0x47 every 188 bytes,
    every 192 in M2TS, every 204 with FEC bytes); READERS for anything else, and for anything that
    is not a regular file or cannot be read here (a FIFO is never read: its bytes would be lost;
    check_file reports the unreadable)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # before open(): opening a FIFO waits for a writer
            return READERS
        with open(path, "rb") as handle:
            head = handle.read(SNIFF_BYTES)
    except (OSError, ValueError):
        return READERS
    return MPEG_STREAM_READERS if _is_mpeg_stream(head) else READERS
