"""Real encoded videos written with PyAV, and the real sample videos of shared/: for the tests and the
benchmarks alike (bench/ never imports tests/; the tests import this)."""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import pytest

SHARED_VIDEOS = Path(os.environ.get("C3D_SHARED_VIDEOS",
                                    Path(__file__).resolve().parents[3] / "shared" / "videos"))
CORRUPT = "decord__tests_test_data_corrupted.mp4"
UCF_LIKE = "mmaction2__tests_data_test.avi"

# (file name, PyAV encoder, pixel format, codec tag): the containers and codecs users have
ZOO = [
    ("h264.mp4", "libx264", "yuv420p", None),
    ("h264_444.mkv", "libx264", "yuv444p", None),
    ("hevc.mp4", "libx265", "yuv420p", None),
    ("hevc_10bit.mkv", "libx265", "yuv420p10le", None),
    ("vp8.webm", "libvpx", "yuv420p", None),
    ("vp9.webm", "libvpx-vp9", "yuv420p", None),
    ("av1.mp4", "libsvtav1", "yuv420p", None),
    ("av1.mkv", "libsvtav1", "yuv420p10le", None),
    ("xvid.avi", "mpeg4", "yuv420p", "XVID"),
    ("mpeg2.mpg", "mpeg2video", "yuv420p", None),
    ("mpeg2.ts", "mpeg2video", "yuv420p", None),
    ("mjpeg.avi", "mjpeg", "yuvj420p", None),
    ("ffv1.mkv", "ffv1", "yuv420p", None),
    ("prores.mov", "prores_ks", "yuv422p10le", None),
    ("flv1.flv", "flv", "yuv420p", None),
    ("wmv2.avi", "wmv2", "yuv420p", None),
]


def shared_video(name: str) -> Path:
    """A real sample video, or a visible skip where shared/videos is absent."""
    path = SHARED_VIDEOS / name
    if not path.is_file():
        pytest.skip(f"real sample video {path} is absent (set C3D_SHARED_VIDEOS to its folder)")
    return path


def moving_frames(n: int, height: int = 240, width: int = 320, seed: int = 0) -> np.ndarray:
    """Textured frames with motion (a drifting gradient and a moving square), uint8 RGB."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:height, 0:width]
    phase = rng.uniform(0, 6.28, 3)
    frames = np.empty((n, height, width, 3), np.uint8)
    for t in range(n):
        for c in range(3):
            frames[t, :, :, c] = 127 + 100 * np.sin(x / 23.0 + y / 37.0 * (c + 1) + phase[c] + t * 0.3)
        top, left = (7 * t) % (height - 40), (11 * t) % (width - 40)
        frames[t, top:top + 40, left:left + 40] = (255 - 40 * (t % 5), 30, 200)
    return frames


def index_frames(n: int, height: int = 240, width: int = 320) -> np.ndarray:
    """Flat grey frames whose level encodes their index (10 + 5 i, up to 48 frames): the YUV round
    trip of any codec moves a flat grey by 1-2 levels, far less than the step."""
    assert 10 + 5 * (n - 1) <= 250
    return np.stack([np.full((height, width, 3), 10 + 5 * i, np.uint8) for i in range(n)])


def frame_index(frame: np.ndarray) -> int:
    """Inverse of index_frames on a decoded (resized, cropped) frame."""
    return int(round((float(np.mean(frame)) - 10) / 5))


def encoder_available(codec: str) -> bool:
    """Whether the installed PyAV (its FFmpeg) can encode `codec`."""
    try:
        av.codec.Codec(codec, "w")
        return True
    except Exception:
        return False


def write_video(path: Path, frames: np.ndarray, codec: str = "libx264", fps: int = 25,
                tag: str | None = None, bit_rate: int = 2_000_000, pix_fmt: str = "yuv420p") -> Path:
    """Encode uint8 RGB frames (N, H, W, 3) into a real video file with PyAV (FFmpeg)."""
    container = av.open(str(path), "w")
    stream = container.add_stream(codec, rate=fps)
    stream.height, stream.width = frames.shape[1:3]
    stream.pix_fmt = pix_fmt
    stream.bit_rate = bit_rate  # FFmpeg's mpeg4 default (200 kb/s) smears even flat frames
    if tag:
        stream.codec_context.codec_tag = tag
    for frame in frames:
        for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


def write_audio_only(path: Path) -> Path:
    """An .m4a with one AAC stream and no video stream."""
    container = av.open(str(path), "w")
    stream = container.add_stream("aac", rate=44100)
    for i in range(10):
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 44100, i * 1024
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path
