"""Where frames become clips, in the process that batches them: the Frames/End/Failed streams of
decoder processes (decode.py) are cut into overlapping clips (clips.ClipCutter), so each frame
crossed from its decoder once although it is in two clips.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Union

import torch

from c3d_extract.extraction.clips import ClipCutter
from c3d_extract.extraction.decode import End, Failed, Frames, decode_frames
from c3d_extract.extraction.inputs import VideoJob
from c3d_extract.models.preprocess import InputSpec


@dataclass
class Clip:
    key: str
    start: int
    frames: torch.Tensor  # uint8 (T, h, w, 3) RGB: cropped, or as decoded with resize on the device
    attempt: int = 0


@dataclass
class Finished:
    key: str
    num_clips: int
    facts: dict
    attempt: int = 0


Item = Union[Clip, Finished, Failed]


class ClipAssembler:
    """Turns the Frames/End/Failed streams of videos (interleaved across videos, in order within
    one) into Clip/Finished/Failed items: windows are cut as soon as they are complete, a video
    shorter than one window is padded by the `short` rule, and a newer attempt starts a video over."""

    def __init__(self, spec: InputSpec, short: str):
        self.spec, self.short = spec, short
        self._videos: dict[str, tuple[int, ClipCutter]] = {}

    def _cutter(self, key: str, attempt: int) -> ClipCutter:
        state = self._videos.get(key)
        if state is None or state[0] != attempt:
            state = (attempt, ClipCutter(self.spec.clip_len, self.spec.stride, self.spec.frame_step))
            self._videos[key] = state
        return state[1]

    def push(self, item) -> Iterator[Item]:
        if isinstance(item, Frames):
            cutter = self._cutter(item.key, item.attempt)
            for start, clip in cutter.push(item.frames):
                yield Clip(item.key, start, torch.from_numpy(clip), item.attempt)
        elif isinstance(item, End):
            cutter = self._cutter(item.key, item.attempt)
            del self._videos[item.key]
            facts = dict(item.facts)
            if cutter.clips_cut == 0:
                if self.short == "skip":
                    yield Failed(item.key, "clips", f"{cutter.frames_seen} frames: shorter than one "
                                                    f"{self.spec.clip_len}-frame window (--short skip)")
                    return
                yield Clip(item.key, 0, torch.from_numpy(cutter.short_clip(self.short)), item.attempt)
                short = f"short:{self.short}"
                facts["status"] = short if facts["status"] == "ok" else f"{facts['status']},{short}"
            yield Finished(item.key, max(cutter.clips_cut, 1), facts, item.attempt)
        else:
            self._videos.pop(item.key, None)
            yield item


def decode_video(job: VideoJob, spec: InputSpec, short: str, resize: bool = True,
                 keep_partial: bool = False) -> Iterator[Item]:
    """All clips of one video, then Finished with its facts, or Failed as soon as anything breaks, in
    this process. Clips of an attempt that a later attempt replaces come first: a consumer keeps only
    the highest attempt of a video (Collector does)."""
    assembler = ClipAssembler(spec, short)
    try:
        for item in decode_frames(job, spec, resize, keep_partial):
            yield from assembler.push(item)
    except Exception as exc:  # a bug or a decoder surprise must cost one video, not the run
        yield Failed(job.key, "decode", f"unexpected {type(exc).__name__}: {exc}")
