"""Fixtures shared by the tests, and the hardware the suite runs on."""

import os
import platform
from pathlib import Path

import pytest
import torch

from c3d_extract.extraction.devices import DEVICE_ENV
from c3d_extract.extraction.runtime import cpu_has_fast_bf16
from bench.support.videos import moving_frames, write_video


def pytest_configure(config) -> None:
    # Tests compare numbers with CPU computations, so every run that does not name a device runs on
    # the CPU, on a GPU machine too (subprocesses inherit it); tests/test_cuda.py names CUDA itself.
    os.environ[DEVICE_ENV] = "cpu"


def pytest_report_header(config) -> str:
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"hardware: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"fast CPU bf16: {'yes' if cpu_has_fast_bf16() else 'no'}, CUDA: {cuda}")


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory) -> Path:
    """A folder of small real videos in several containers and codecs (session-wide, read-only)."""
    root = tmp_path_factory.mktemp("videos")
    write_video(root / "h264.mp4", moving_frames(40, seed=1))
    (root / "sub").mkdir()
    write_video(root / "sub" / "xvid.avi", moving_frames(24, seed=2), codec="mpeg4", tag="XVID")
    write_video(root / "sub" / "h264.mkv", moving_frames(17, seed=3))
    return root
