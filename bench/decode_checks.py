"""CPU seconds of the decode stage (decode.decode_frames: decode, resize, crop; no clips) for each video, in
this process, one thread: to compare the damage checks of issue #25 (the declaration probe, decord's
timeline, VP8's slice-threaded check) with a tree without them, timed from outside with PYTHONPATH
naming each tree in turn (A B A B: the pairs give the ratio).

    python bench/decode_checks.py VIDEO [VIDEO ...] [--copies 5] [--no-verify-vp8]

Prints one line per video: `name seconds` (the total over --copies consecutive reads).
"""

from __future__ import annotations

import argparse
import inspect
import os
import time

import cv2

from c3d_extract.extraction.decode import decode_frames
from c3d_extract.extraction.inputs import VideoJob
from c3d_extract.models.registry import C3D_SPORTS1M

cv2.setNumThreads(1)  # one thread per decoder, as in the decoder processes


def _decode(path: str, verify_vp8: bool):
    """decode_frames on `path` as the tree timed takes its settings: DecoderSettings whole, or (an older
    tree) the input spec and a vp8_check keyword where it has one."""
    parameters = inspect.signature(decode_frames).parameters
    if "decoder" in parameters:
        from c3d_extract.extraction.decode import DecoderSettings

        return decode_frames(VideoJob("v", path), DecoderSettings(C3D_SPORTS1M.input, vp8_check=verify_vp8))
    extra = {"vp8_check": verify_vp8} if "vp8_check" in parameters else {}
    return decode_frames(VideoJob("v", path), C3D_SPORTS1M.input, **extra)


def stage_seconds(path: str, copies: int, verify_vp8: bool) -> float:
    """CPU seconds of this process (all its threads: decord's decoder thread, slice threads) for `copies`
    consecutive reads of `path` through decode_frames, after one warm read: steadier than the wall clock
    on a shared machine."""
    for _ in _decode(path, verify_vp8):
        pass
    started = time.process_time()
    for _ in range(copies):
        for _ in _decode(path, verify_vp8):
            pass
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("videos", nargs="+")
    parser.add_argument("--copies", type=int, default=5)
    parser.add_argument("--no-verify-vp8", dest="verify_vp8", action="store_false")
    args = parser.parse_args()
    for path in args.videos:
        print(os.path.basename(path), f"{stage_seconds(path, args.copies, args.verify_vp8):.4f}", flush=True)


if __name__ == "__main__":
    main()
