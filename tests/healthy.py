"""A corpus of healthy videos in the shapes real files come in (issue #31): audio longer or shorter
than the video, AVI repeat chunks, variable frame rates with a pause, edit lists, non-zero start
times, B-frames with negative DTS, open GOPs, no declared duration, fragmented MP4, NTSC and 1 fps
rates, one and 15 frames, a rotated phone video, 10-bit and 4:4:4. All made here with PyAV's
encoders and muxers (FFmpeg's own), none of them damaged: a damage check that fails one is wrong."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Optional, Sequence

import av
import numpy as np

from bench.support.videos import encoder_available, moving_frames

HEIGHT, WIDTH = 72, 96


@dataclass(frozen=True)
class Shape:
    """One healthy file: its name, video codec and pixel format, frame count, rate, and what makes
    it unusual. `pts` are the frames' timestamps in 1/`rate` units (None: 0, 1, 2, ...); `audio` is
    the audio track's length in seconds (None: no audio); `options` go to the muxer."""

    name: str
    frames: int = 24
    codec: str = "libx264"
    pix_fmt: str = "yuv420p"
    rate: Fraction = Fraction(25)
    pts: Optional[Sequence[int]] = None
    audio: Optional[float] = None
    options: dict = field(default_factory=dict)
    codec_options: dict = field(default_factory=dict)
    rotation: Optional[int] = None
    audio_first: bool = False  # the audio track is stream 0, the video stream 1

    @property
    def shown(self) -> int:
        """The frames a player shows: an edit list hides those before time 0."""
        return self.frames if self.pts is None else sum(1 for stamp in self.pts if stamp >= 0)


def _audio_codec(name: str) -> str:
    suffix = name.rsplit(".", 1)[1]
    return {"webm": "libopus", "avi": "pcm_s16le", "flv": "libmp3lame", "mpg": "mp2"}.get(suffix, "aac")


def _jittered(n: int, pause_at: int, pause: int, seed: int = 0) -> list[int]:
    """Timestamps in 1/3000 s of a ~30 fps phone recording: every interval 90-110 ticks (jitter),
    and one pause of `pause` ticks before frame `pause_at` (the camera stalled)."""
    rng = np.random.RandomState(seed)
    steps = rng.randint(90, 111, n)
    steps[0] = 0
    steps[pause_at] = pause
    return list(np.cumsum(steps))


SHAPES: list[Shape] = [
    # audio longer than the video and the video longer than the audio, in every usual container
    # (the issue's: a 2 s H.264 MKV with 4 s of audio, FFmpeg's Matroska muxer)
    Shape("audio_longer.mkv", 50, audio=4.0),
    *[Shape(f"audio_longer.{ext}", 20, codec, audio=4.0) for ext, codec in
      (("mp4", "libx264"), ("webm", "libvpx"), ("avi", "mpeg4"), ("mov", "libx264"))],
    *[Shape(f"video_longer.{ext}", 20, codec, audio=0.3) for ext, codec in
      (("mp4", "libx264"), ("mkv", "libx264"), ("webm", "libvpx-vp9"), ("avi", "mpeg4"), ("mov", "libx264"))],
    Shape("audio_first_longer.mkv", 20, audio=2.0, audio_first=True),
    # AVI repeat chunks: 30 coded frames over 120 frame slots at 15 fps, unevenly (a still scene is
    # all repeats, motion none), as capture tools write them; FFmpeg's AVI muxer writes a zero-size
    # chunk for each skipped slot
    Shape("repeat_chunks.avi", 30, "cinepak", "rgb24", Fraction(15),
          pts=[*range(0, 10), *range(40, 50), *range(100, 110)]),
    Shape("repeat_chunks_tail.avi", 30, "mpeg4", rate=Fraction(15),
          pts=[*range(0, 20), *range(20, 100, 8)]),
    # variable frame rate as phones write it: jitter, and a real 1.5 s pause
    Shape("vfr_pause.mp4", 24, rate=Fraction(3000), pts=_jittered(24, 12, 4500), audio=2.5),
    Shape("vfr_pause.mkv", 24, rate=Fraction(3000), pts=_jittered(24, 12, 4500, seed=1)),
    Shape("vfr_pause.mov", 24, rate=Fraction(3000), pts=_jittered(24, 15, 4500, seed=2)),
    # the video starts 0.5 s after the audio (an empty edit in MP4; a non-zero start elsewhere)
    Shape("late_start.mp4", 20, pts=[12 + i for i in range(20)], audio=1.8),
    Shape("late_start.mkv", 20, pts=[250 + i for i in range(20)]),
    Shape("late_start.webm", 20, "libvpx", pts=[25 + i for i in range(20)], audio=1.8),
    # an edit list that cuts the first frames of the media (a stream copy cut at a non-keyframe)
    Shape("edit_list_cut.mp4", 26, pts=[i - 6 for i in range(26)]),
    # B-frames: negative DTS kept in MP4 (no edit list), and in Matroska
    Shape("bframes_negative_dts.mp4", 20, codec_options={"bf": "3"},
          options={"movflags": "negative_cts_offsets", "use_editlist": "0"}),
    Shape("bframes.mkv", 20, codec_options={"bf": "3"}),
    # open GOPs
    Shape("open_gop.mp4", 24, codec_options={"x264-params": "open-gop=1:keyint=8:bframes=3"}),
    Shape("open_gop.mkv", 24, codec_options={"x264-params": "open-gop=1:keyint=8:bframes=3"}),
    # no duration declared anywhere (a live Matroska stream), a fragmented MP4
    Shape("no_duration.mkv", 20, options={"live": "1"}, audio=1.0),
    Shape("fragmented.mp4", 24, options={"movflags": "frag_keyframe+empty_moov+default_base_moof"},
          codec_options={"g": "8"}, audio=2.0),
    # NTSC rates and 1 fps
    Shape("ntsc_23.976.mp4", 20, rate=Fraction(24000, 1001)),
    Shape("ntsc_29.97.mkv", 20, rate=Fraction(30000, 1001)),
    Shape("ntsc_59.94.mp4", 20, rate=Fraction(60000, 1001)),
    Shape("one_fps.mp4", 20, rate=Fraction(1)),
    Shape("one_fps.avi", 20, "mpeg4", rate=Fraction(1)),
    # one frame and 15 frames (shorter than a clip)
    Shape("one_frame.mp4", 1),
    Shape("fifteen_frames.mkv", 15),
    # a portrait phone video: rotation -90 in the display matrix, AAC audio, ~30 fps with jitter
    Shape("phone_rotated.mov", 24, rate=Fraction(3000), pts=_jittered(24, 20, 100, seed=3), audio=1.4,
          rotation=-90),
    # 10-bit and 4:4:4
    Shape("hevc_10bit.mkv", 20, "libx265", "yuv420p10le"),
    Shape("h264_10bit.mp4", 20, "libx264", "yuv420p10le"),
    Shape("h264_444.mp4", 20, "libx264", "yuv444p"),
    Shape("vp9_444.webm", 20, "libvpx-vp9", "yuv444p"),
]


def available(shape: Shape) -> bool:
    """Whether this PyAV can encode `shape` (its video codec, its pixel format, its audio)."""
    if not encoder_available(shape.codec):
        return False
    if shape.audio is not None and not encoder_available(_audio_codec(shape.name)):
        return False
    return shape.pix_fmt in {f.name for f in av.codec.Codec(shape.codec, "w").video_formats or ()}


def write_shape(folder: Path, shape: Shape, seed: int = 0) -> Path:
    """Encode `shape` into `folder` with PyAV: its frames are moving_frames, `seed`ed."""
    path = folder / shape.name
    frames = moving_frames(shape.frames, HEIGHT, WIDTH, seed=seed)
    container = av.open(str(path), "w", options=dict(shape.options))
    streams = {}
    audio_rate = 48000
    if shape.audio is not None and shape.audio_first:
        streams["audio"] = container.add_stream(_audio_codec(shape.name), rate=audio_rate)
    video = container.add_stream(shape.codec, rate=shape.rate, options=dict(shape.codec_options))
    video.height, video.width, video.pix_fmt = HEIGHT, WIDTH, shape.pix_fmt
    video.bit_rate = 1_000_000
    video.codec_context.time_base = Fraction(1) / shape.rate
    if shape.pts is not None:
        video.time_base = Fraction(1) / shape.rate
    if shape.rotation is not None:
        video.set_display_rotation(shape.rotation)
    if shape.audio is not None and not shape.audio_first:
        streams["audio"] = container.add_stream(_audio_codec(shape.name), rate=audio_rate)
    pts = shape.pts if shape.pts is not None else range(shape.frames)
    packets = []
    for image, stamp in zip(frames, pts):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame.pts, frame.time_base = int(stamp), video.codec_context.time_base
        packets += video.encode(frame)
    packets += video.encode()
    if "audio" in streams:
        packets += _audio_packets(streams["audio"], shape.audio, audio_rate)
    # interleave by time, as a recording would
    packets.sort(key=lambda p: float((p.dts if p.dts is not None else 0) * p.time_base))
    for packet in packets:
        container.mux(packet)
    container.close()
    return path


def _audio_packets(stream, seconds: float, rate: int) -> list:
    """`seconds` of a 440 Hz tone, encoded."""
    packets, size = [], 960
    total = int(seconds * rate)
    for start in range(0, total, size):
        count = min(size, total - start)
        t = (np.arange(start, start + count) / rate).astype(np.float32)
        samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
        fmt = stream.codec_context.format.name
        layout = "mono"
        if fmt == "s16":
            pcm = (samples * 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout=layout)
        else:
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
        packets += stream.encode(frame)
    packets += stream.encode()
    return packets
