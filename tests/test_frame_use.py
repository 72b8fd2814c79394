"""Frames no clip reads are neither converted to RGB nor resized (issue #32): Res3D reads every second
frame of windows that start every 8 frames, so the odd frames past the first window are never used.
The rule is checked against the windows themselves, and Res3D's clips and features on a real video
against an independent computation (every frame decoded, resized and cropped, then the windows cut)."""

from __future__ import annotations

import cv2
import av
import numpy as np
import pytest
import torch

from c3d_extract.extraction.assemble import Clip, ClipAssembler, Finished
from c3d_extract.extraction.clips import short_indices, window_starts
from c3d_extract.extraction.decode import DecoderSettings, decode_frames
from c3d_extract.extraction.inputs import VideoJob
from c3d_extract.models.net import init_random
from c3d_extract.models.preprocess import InputSpec
from c3d_extract.models.registry import RES3D_SPORTS1M
from bench.support.videos import UCF_LIKE, moving_frames, shared_video, write_video


def frames_read(num_frames: int, clip_len: int, stride: int, frame_step: int) -> set[int]:
    """Every frame index a clip of the video reads (clips.py's rule, written out)."""
    starts = window_starts(num_frames, clip_len, stride)
    if not starts:
        return {i for rule in ("loop", "edge") for i in short_indices(num_frames, clip_len, rule)[::frame_step]}
    return {start + k for start in starts for k in range(0, clip_len, frame_step)}


@pytest.mark.parametrize("clip_len, stride, frame_step", [(16, 8, 2), (16, 8, 1), (16, 6, 4), (16, 5, 2),
                                                          (8, 4, 4), (16, 16, 2), (12, 9, 3)])
def test_every_frame_a_clip_reads_is_used(clip_len, stride, frame_step):
    spec = InputSpec(clip_len, stride, frame_step, (128, 171), (112, 112), None, "RGB", 1.0, (0.0, 0.0, 0.0))
    for num_frames in (1, 3, 7, clip_len - 1, clip_len, clip_len + 1, 41, 100):
        read = frames_read(num_frames, clip_len, stride, frame_step)
        used = {i for i in range(num_frames) if spec.frame_used(i)}
        assert read <= used, (num_frames, sorted(read - used))
        if stride % frame_step == 0 and num_frames > 2 * clip_len:  # and the skipped ones are really unused
            assert used - read <= set(range(clip_len)) | set(range(num_frames - stride, num_frames))
    if stride % frame_step:  # a window starting at an odd multiple reads the other frames
        assert all(spec.frame_used(i) for i in range(200))
    else:
        assert [i for i in range(clip_len, clip_len + 2 * frame_step) if spec.frame_used(i)] == [clip_len, clip_len + frame_step]


def independent_clips(path: str, spec: InputSpec) -> np.ndarray:
    """Res3D's clips computed without the tool's reader or cropper: every frame by PyAV's to_ndarray,
    cv2.resize(INTER_LINEAR) to 128x171, cropped at (8, 29), 16-frame windows every 8, every 2nd frame."""
    with av.open(path) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    (top, left), (h, w) = spec.crop_offset, spec.crop
    cropped = np.stack([cv2.resize(f, (171, 128), interpolation=cv2.INTER_LINEAR)[top:top + h, left:left + w]
                        for f in frames])
    return np.stack([cropped[s: s + 16: 2] for s in window_starts(len(cropped), 16, 8)])


def tool_clips(path: str, spec: InputSpec, **kwargs) -> tuple[np.ndarray, list]:
    assembler, clips, ends = ClipAssembler(spec, "loop"), [], []
    for item in decode_frames(VideoJob("v", path), DecoderSettings(spec, **kwargs)):
        for out in assembler.push(item):
            if isinstance(out, Clip):
                clips.append(np.array(out.frames))
            elif isinstance(out, Finished):
                ends.append(out.facts)
    return np.stack(clips), ends


def test_res3d_clips_and_features_equal_an_independent_computation_on_a_real_video():
    path, spec = str(shared_video(UCF_LIKE)), RES3D_SPORTS1M.input
    clips, ends = tool_clips(path, spec)
    expected = independent_clips(path, spec)
    assert ends[0]["num_frames"] == 164 and ends[0]["status"] == "ok"
    assert clips.shape == expected.shape == (19, 8, 112, 112, 3)
    assert np.array_equal(clips, expected)
    net = RES3D_SPORTS1M.build()
    init_random(net, seed=0)
    net.eval()
    with torch.inference_mode():
        def features(batch: np.ndarray) -> torch.Tensor:
            return net(spec.normalize(torch.from_numpy(batch)), ["pool5"])["pool5"]
        assert torch.equal(features(clips[:3]), features(expected[:3]))


@pytest.mark.parametrize("frames", [5, 15, 16, 17, 30])
def test_short_and_odd_length_videos_keep_their_clips(tmp_path, frames):
    """A video shorter than a window pads its one clip from any of its frames (loop: frame i mod N);
    the first clip_len frames are always resized, so the padded clip is what it was."""
    path = str(write_video(tmp_path / "v.mp4", moving_frames(frames, 120, 160, seed=frames)))
    spec = RES3D_SPORTS1M.input
    with av.open(path) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    (top, left), (h, w) = spec.crop_offset, spec.crop
    cropped = np.stack([cv2.resize(f, (171, 128), interpolation=cv2.INTER_LINEAR)[top:top + h, left:left + w]
                        for f in decoded])
    for short in ("loop", "edge"):
        assembler, clips = ClipAssembler(spec, short), []
        for item in decode_frames(VideoJob("v", path), DecoderSettings(spec)):
            clips += [np.array(out.frames) for out in assembler.push(item) if isinstance(out, Clip)]
        if frames < 16:
            expected = [cropped[short_indices(frames, 16, short)[::2]]]
        else:
            expected = [cropped[s: s + 16: 2] for s in window_starts(frames, 16, 8)]
        assert len(clips) == len(expected) and all(np.array_equal(a, b) for a, b in zip(clips, expected))


def test_frames_no_clip_reads_travel_black_and_all_are_kept_with_resize_on_device():
    path, spec = str(shared_video(UCF_LIKE)), RES3D_SPORTS1M.input
    sent = np.concatenate([i.frames for i in decode_frames(VideoJob("v", path), DecoderSettings(spec)) if hasattr(i, "frames")])
    black = [i for i in range(len(sent)) if not sent[i].any()]
    assert black == [i for i in range(16, 164) if i % 2]
    whole = [i.frames for i in decode_frames(VideoJob("v", path), DecoderSettings(spec, "device")) if hasattr(i, "frames")]
    assert all(frame.any() for chunk in whole for frame in chunk)
