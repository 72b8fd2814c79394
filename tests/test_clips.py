"""Which frames land in which clip: the window rule, the tail, short videos, any chunking."""

import pytest
import torch

from c3d_extract.extraction.clips import ClipCutter, short_indices, window_starts
from c3d_extract.extraction.inputs import VideoJob
from c3d_extract.models.registry import C3D_SPORTS1M, RES3D_SPORTS1M
from c3d_extract.extraction.assemble import Clip, Failed, Finished
from bench.support.decoding import decode_video
from bench.support.videos import frame_index, index_frames, write_video


@pytest.mark.parametrize("n, starts", [(1, []), (10, []), (15, []), (16, [0]), (17, [0]), (23, [0]),
                                       (24, [0, 8]), (100, list(range(0, 85, 8)))])
def test_window_starts_only_whole_windows(n, starts):
    assert window_starts(n, 16, 8) == starts


def test_short_video_rules():
    assert short_indices(10, 16, "loop") == list(range(10)) + list(range(6))
    assert short_indices(10, 16, "edge") == list(range(10)) + [9] * 6
    assert short_indices(1, 16, "loop") == [0] * 16


@pytest.mark.parametrize("chunks", [[100], [1] * 100, [7, 13, 1, 64, 15], [16] * 6 + [4]])
@pytest.mark.parametrize("step", [1, 2])
def test_cutter_gives_the_same_clips_whatever_the_chunking(chunks, step):
    frames = torch.arange(100).view(100, 1)
    cutter = ClipCutter(16, 8, step)
    got, at = [], 0
    for size in chunks:
        got += list(cutter.push(frames[at: at + size]))
        at += size
    assert [s for s, _ in got] == window_starts(100, 16, 8)
    for start, clip in got:
        assert clip.view(-1).tolist() == list(range(start, start + 16, step))
    assert cutter.held <= max(16 + max(chunks), cutter.BUFFER_BYTES)  # memory stays bounded


def _clips(path, spec, short="loop"):
    items = list(decode_video(VideoJob(path.name, str(path)), spec, short))
    clips = [i for i in items if isinstance(i, Clip)]
    return [[frame_index(f) for f in c.frames] for c in clips], items[-1]


@pytest.mark.parametrize("codec, suffix", [("libx264", "mp4"), ("mpeg4", "avi")])
def test_frames_carry_their_index_through_decode_resize_and_crop(tmp_path, codec, suffix):
    path = write_video(tmp_path / f"index.{suffix}", index_frames(41), codec=codec)
    c3d, end = _clips(path, C3D_SPORTS1M.input)
    assert c3d == [list(range(s, s + 16)) for s in (0, 8, 16, 24)]  # frames 40 is the dropped tail
    assert isinstance(end, Finished) and end.num_clips == 4 and end.facts["num_frames"] == 41
    res, _ = _clips(path, RES3D_SPORTS1M.input)
    assert res == [list(range(s, s + 16, 2)) for s in (0, 8, 16, 24)]
    assert all(len(c) == 8 for c in res)


def test_short_videos_are_padded_by_the_chosen_rule(tmp_path):
    path = write_video(tmp_path / "ten.mp4", index_frames(10))
    loop, end = _clips(path, C3D_SPORTS1M.input, "loop")
    assert loop == [list(range(10)) + list(range(6))] and end.facts["status"] == "short:loop"
    edge, _ = _clips(path, RES3D_SPORTS1M.input, "edge")
    assert edge == [[0, 2, 4, 6, 8, 9, 9, 9]]
    none, end = _clips(path, C3D_SPORTS1M.input, "skip")
    assert none == [] and isinstance(end, Failed) and end.stage == "clips" and "shorter than one 16-frame" in end.error


def test_one_frame_video_gives_one_clip_of_that_frame(tmp_path):
    path = write_video(tmp_path / "one.mp4", index_frames(1))
    clips, end = _clips(path, C3D_SPORTS1M.input)
    assert clips == [[0] * 16] and end.num_clips == 1
