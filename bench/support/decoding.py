"""Decoding a whole video in the calling process, for tests and benchmarks (the tool itself decodes
in decoder processes: extraction/workers.py). Light on imports: bench/memory.py measures it."""

from __future__ import annotations

from typing import Iterator

from c3d_extract.extraction.assemble import Clip, ClipAssembler, Failed, Item
from c3d_extract.extraction.decode import DecoderSettings, decode_frames
from c3d_extract.extraction.inputs import VideoJob
from c3d_extract.models.preprocess import InputSpec


def decode_video(job: VideoJob, input_spec: InputSpec, short: str, resize_on: str = "workers",
                 keep_partial: bool = False) -> Iterator[Item]:
    """All clips of one video, then Finished with its facts, or Failed as soon as anything breaks, in
    this process. Clips of an attempt that a later attempt replaces come first: a consumer keeps only
    the highest attempt of a video (Collector does). Each clip's frames are its own copy."""
    assembler = ClipAssembler(input_spec, short)
    try:
        for item in decode_frames(job, DecoderSettings(input_spec, resize_on, keep_partial)):
            for out in assembler.push(item):
                if isinstance(out, Clip):
                    out.frames = out.frames.copy()
                yield out
    except Exception as exc:  # a bug or a decoder surprise must cost one video, not the run
        yield Failed(job.key, "decode", f"unexpected {type(exc).__name__}: {exc}")
