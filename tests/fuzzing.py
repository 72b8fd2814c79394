"""Seeded byte-level damage for fuzzing the readers (tests/test_fuzz_readers.py), and the runner that
decodes each damaged file in a process of its own setting (a decoder process: FFmpeg's native lines
caught by NativeStderr), one JSON line per file so a crash still says which file it was in."""

from __future__ import annotations

import random

MUTATIONS = ("flip", "run", "cut", "dup", "splice", "truncate", "header")


def mutate(source: bytes, other: bytes, kind: str, seed: int) -> bytes:
    """A seeded damage of `source` anywhere in the file (headers included): flipped bits, a run of
    random bytes, a cut or duplicated span, a span of `other` spliced in, the file cut short, or
    bits flipped in its first 512 bytes (where the container's headers are)."""
    rng, data = random.Random(f"{kind}:{seed}"), bytearray(source)
    size = len(data)
    if kind in ("flip", "header"):
        top = min(512, size) if kind == "header" else size
        for _ in range(rng.randint(1, 24)):
            data[rng.randrange(top)] ^= 1 << rng.randrange(8)
    elif kind == "run":
        at, length = rng.randrange(size), rng.randint(4, 256)
        data[at:at + length] = bytes(rng.randrange(256) for _ in range(length))
    elif kind in ("cut", "dup"):
        at, length = rng.randrange(size), rng.randint(1, max(1, size // 4))
        if kind == "dup":
            data[at:at] = data[at:at + length]
        else:
            del data[at:at + length]
    elif kind == "splice":
        at, start = rng.randrange(size), rng.randrange(len(other))
        data[at:at + rng.randint(16, 4096)] = other[start:start + rng.randint(16, 4096)]
    elif kind == "truncate":
        del data[rng.randrange(1, size):]
    return bytes(data)


# decode_frames with one reader at a time, in a decoder process's setting. Python's own errors go to a
# dup of the original stderr (NativeStderr.install() sends fd 2 to its file), and the exception of a
# file is written into its JSON line: a runner that breaks says what broke, and where.
RUNNER = """
import json, os, sys, traceback
saved = os.dup(2)
from c3d_extract.extraction.decode import DecoderSettings, decode_frames
from c3d_extract.extraction.ffmpeg_log import NativeStderr
from c3d_extract.extraction.messages import End
from c3d_extract.extraction.inputs import VideoJob
from c3d_extract.extraction.decord_reader import DecordReader
from c3d_extract.extraction.pyav_reader import PyAVReader
from c3d_extract.models.registry import RES3D_SPORTS1M
RES3D_DECODER = DecoderSettings(RES3D_SPORTS1M.input)  # the decoders' settings of a Res3D run
NativeStderr.install()
sys.stderr = os.fdopen(saved, "w", buffering=1)
for path in sys.argv[1:]:
    line = {"path": path}
    for reader in (DecordReader, PyAVReader):
        try:
            end = list(decode_frames(VideoJob(path, path), RES3D_DECODER, readers=[reader]))[-1]
            ok = isinstance(end, End)
            line[reader.name] = ("ok:" + end.facts["status"]) if ok else "failed:" + end.error
        except Exception as exc:
            line[reader.name] = f"unexpected {type(exc).__name__}: {exc} | " + traceback.format_exc(limit=-3)
    print(json.dumps(line), flush=True)
"""
