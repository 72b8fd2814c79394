"""The two readers (decord, PyAV) on real encoded files: containers, sizes, lengths, rotation and every
kind of bad input."""

import os

import numpy as np
import pytest

from c3d_extract.extraction.decord_reader import DecordReader as VideoReader
from c3d_extract.extraction.pyav_reader import PyAVReader
from c3d_extract.extraction.reader_base import VideoError
from bench.support.videos import CORRUPT, UCF_LIKE, moving_frames, shared_video, write_audio_only, write_video


def read_all(path, reader_class=VideoReader):
    reader = reader_class(str(path))
    chunks = list(reader.chunks())
    return reader, np.concatenate(chunks), chunks


@pytest.mark.parametrize("n", [1, 10, 16, 17, 100])
def test_h264_mp4_of_any_length_decodes_every_frame_in_order(tmp_path, n):
    frames = moving_frames(n, seed=n)
    reader, decoded, _ = read_all(write_video(tmp_path / f"n{n}.mp4", frames))
    assert reader.info.num_frames == n and decoded.shape == (n, 240, 320, 3)
    assert reader.info.fps == pytest.approx(25.0)
    # lossy codec: close to the source, and frame t is nearer to source t than to t+1
    assert np.abs(decoded.astype(int) - frames.astype(int)).mean() < 6
    if n > 1:
        assert np.abs(decoded[0].astype(int) - frames[1].astype(int)).mean() > 10


@pytest.mark.parametrize("codec, suffix, tag, size", [
    ("mpeg4", "avi", "XVID", (240, 320)),      # UCF101's container and codec
    ("libx264", "mkv", None, (240, 320)),
    ("mpeg4", "avi", None, (239, 321)),        # true odd size (x264 cannot encode it)
    ("libx264", "mp4", None, (320, 240)),      # portrait
    ("libx264", "mp4", None, (720, 1280)),     # large frames: smaller chunks
])
def test_containers_codecs_and_sizes(tmp_path, codec, suffix, tag, size):
    path = write_video(tmp_path / f"v.{suffix}", moving_frames(20, *size), codec=codec, tag=tag)
    reader, decoded, chunks = read_all(path)
    assert decoded.shape == (20, *size, 3) and (reader.info.height, reader.info.width) == size
    frame_bytes = size[0] * size[1] * 3
    assert max(len(c) for c in chunks) * frame_bytes <= max(32 * 2**20, 4 * frame_bytes)


def test_real_ucf_like_avi(tmp_path):
    reader, decoded, _ = read_all(shared_video(UCF_LIKE))
    assert decoded.shape == (164, 240, 320, 3) and reader.info.fps == pytest.approx(25.0)


@pytest.mark.parametrize("reader_class", [VideoReader, PyAVReader])
def test_rotation_metadata_is_applied(reader_class):
    reader, decoded, _ = read_all(shared_video("decord__tests_test_data_video_90.mov"), reader_class)
    assert decoded.shape == (3, 568, 320, 3) and (reader.info.height, reader.info.width) == (568, 320)
    if reader_class is PyAVReader:  # turned the way decord turns it
        _, by_decord, _ = read_all(shared_video("decord__tests_test_data_video_90.mov"))
        assert np.array_equal(decoded, by_decord)  # bit for bit


@pytest.mark.parametrize("codec, suffix, tag", [("libx264", "mp4", None), ("mpeg4", "avi", "XVID")])
def test_pyav_gives_the_frames_decord_gives(tmp_path, codec, suffix, tag):
    path = write_video(tmp_path / f"v.{suffix}", moving_frames(30, seed=5), codec=codec, tag=tag)
    decord_reader, by_decord, _ = read_all(path)
    pyav_reader, by_pyav, _ = read_all(path, PyAVReader)
    assert by_pyav.shape == by_decord.shape and pyav_reader.repaired == 0
    diff = np.abs(by_pyav.astype(int) - by_decord.astype(int))
    assert diff.max() <= 2 and diff.mean() < 0.2, (diff.max(), diff.mean())  # swscale of FFmpeg 8 vs 4.1
    assert pyav_reader.info.fps == pytest.approx(decord_reader.info.fps)


def _error(path) -> VideoError:
    with pytest.raises(VideoError) as caught:
        reader = VideoReader(str(path))
        for _ in reader.chunks():
            pass
    return caught.value


def test_missing_file_and_directory(tmp_path):
    err = _error(tmp_path / "nope.mp4")
    assert err.stage == "open" and str(err) == "no such file"
    assert "is a directory" in str(_error(tmp_path))


def test_empty_garbage_and_truncated_files(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert str(_error(tmp_path / "empty.mp4")) == "empty file (0 bytes)"
    (tmp_path / "garbage.mp4").write_bytes(os.urandom(4096))
    assert "not a readable video" in str(_error(tmp_path / "garbage.mp4"))
    good = write_video(tmp_path / "good.mp4", moving_frames(30)).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(good[: len(good) // 2])  # moov atom at the end is lost
    assert _error(tmp_path / "cut.mp4").stage == "open"


def test_audio_only_and_zero_frame_files(tmp_path):
    err = _error(write_audio_only(tmp_path / "sound.m4a"))
    assert err.stage == "open" and "no video stream" in str(err)
    with pytest.raises(VideoError, match=r"no video stream \(1 audio stream\(s\)\)") as caught:
        PyAVReader(str(tmp_path / "sound.m4a"))
    assert caught.value.final
    zero = write_video(tmp_path / "zero.avi", moving_frames(0), codec="mpeg4")
    assert _error(zero).stage == "open"


@pytest.mark.skipif(os.geteuid() == 0, reason="running as root: file permissions do not stop reads")
def test_unreadable_file(tmp_path):
    path = write_video(tmp_path / "locked.mp4", moving_frames(3))
    path.chmod(0)
    assert "cannot read" in str(_error(path))


def test_really_corrupt_real_video_fails_while_decoding():
    err = _error(shared_video(CORRUPT))
    assert err.stage == "decode" and "of 50" in str(err) and "invalid data" in str(err)
    assert "\n" not in str(err) and "/github/workspace" not in str(err)
