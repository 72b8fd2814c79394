"""Where frames become clips, in the process that batches them: the Frames/End/Failed streams of
decoder processes (decode.py) are cut into overlapping clips (clips.ClipCutter), so each frame
crossed from its decoder once although it is in two clips.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Union

import numpy as np

from c3d_extract.extraction.clips import ClipCutter
from c3d_extract.extraction.messages import End, Failed, Frames, FramesHeader
from c3d_extract.models.preprocess import InputSpec


@dataclass
class Clip:
    """One window of a video. `frames` is uint8 (T, h, w, 3) RGB, cropped: a numpy view of the
    cutter's buffer, or with `--resize-on device` a torch tensor on the network's device. A view is
    never rewritten, but it holds its buffer: copy it (into a batch slot) rather than keep it."""

    key: str
    start: int
    frames: Any
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
    shorter than one window is padded by the `short` rule, and a newer attempt starts a video over.

    `place`, when given, takes each chunk of decoded frames to where clips are cut (with
    `--resize-on device`: uploaded once and resized on the network's device)."""

    def __init__(self, input_spec: InputSpec, short: str, place: Optional[Callable[[np.ndarray], Any]] = None):
        self.input_spec, self.short, self.place = input_spec, short, place
        self._videos: dict[str, tuple[int, ClipCutter]] = {}
        self._scratch = np.empty(0, np.uint8)  # where frames for `place` are received
        # cropped frames have one shape per run: their buffers go from video to video (ClipCutter)
        self._spares: Optional[list] = [] if place is None else None

    def _cutter(self, key: str, attempt: int) -> ClipCutter:
        state = self._videos.get(key)
        if state is None or state[0] != attempt:
            if state is not None:
                state[1].release()
            spec = self.input_spec
            state = (attempt, ClipCutter(spec.clip_len, spec.stride, spec.frame_step, self._spares))
            self._videos[key] = state
        return state[1]

    def _end(self, key: str) -> None:
        state = self._videos.pop(key, None)
        if state is not None:
            state[1].release()

    def drop(self, key: str) -> None:
        """Forget a video's frames: the decoder that sent them gave it up, another reads it (nvdec.py)."""
        self._end(key)

    def receive(self, header: FramesHeader, read_into: Callable[[np.ndarray], None]) -> Iterator[Item]:
        """Frames announced by `header`: `read_into(array)` fills an array of the header's shape in
        place (from a decoder's pipe, straight into the cutter's buffer); then their clips."""
        cutter = self._cutter(header.key, header.attempt)
        count = header.shape[0]
        if self.place is None:
            read_into(cutter.reserve(count, header.shape[1:]))
            chunks = cutter.commit(count)
        else:
            size = int(np.prod(header.shape))
            if self._scratch.size < size:
                self._scratch = np.empty(size, np.uint8)
            frames = self._scratch[:size].reshape(header.shape)
            read_into(frames)
            chunks = cutter.push(self.place(frames))
        for start, clip in chunks:
            yield Clip(header.key, start, clip, header.attempt)

    def receive_ring(self, key: str, attempt: int, ring: np.ndarray, first: int, position: int,
                     count: int) -> Iterator[Item]:
        """Frames a decoder wrote into its shared ring (ring.py): their clips, as views of the ring.
        Returns the first frame of the video the ring must keep for what is still to come."""
        cutter = self._cutter(key, attempt)
        for start, clip in cutter.attach(ring, first, position, count):
            yield Clip(key, start, clip, attempt)
        return cutter.needed_from

    def push(self, item) -> Iterator[Item]:
        if isinstance(item, Frames):
            cutter = self._cutter(item.key, item.attempt)
            frames = item.frames if self.place is None else self.place(item.frames)
            for start, clip in cutter.push(frames):
                yield Clip(item.key, start, clip, item.attempt)
        elif isinstance(item, End):
            cutter = self._cutter(item.key, item.attempt)
            short_clip = cutter.short_clip(self.short) if cutter.clips_cut == 0 and self.short != "skip" else None
            self._end(item.key)
            facts = dict(item.facts)
            if cutter.clips_cut == 0:
                if short_clip is None:
                    yield Failed(item.key, "clips", f"{cutter.frames_seen} frames: shorter than one "
                                                    f"{self.input_spec.clip_len}-frame window (--short skip)")
                    return
                yield Clip(item.key, 0, short_clip, item.attempt)
                short = f"short:{self.short}"
                facts["status"] = short if facts["status"] == "ok" else f"{facts['status']},{short}"
            yield Finished(item.key, max(cutter.clips_cut, 1), facts, item.attempt)
        else:
            self._end(item.key)
            yield item

