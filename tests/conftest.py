"""Fixtures shared by the tests."""

from pathlib import Path

import pytest

from tests.videos import moving_frames, write_video


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory) -> Path:
    """A folder of small real videos in several containers and codecs (session-wide, read-only)."""
    root = tmp_path_factory.mktemp("videos")
    write_video(root / "h264.mp4", moving_frames(40, seed=1))
    (root / "sub").mkdir()
    write_video(root / "sub" / "xvid.avi", moving_frames(24, seed=2), codec="mpeg4", tag="XVID")
    write_video(root / "sub" / "h264.mkv", moving_frames(17, seed=3))
    return root
