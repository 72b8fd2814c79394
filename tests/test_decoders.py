"""Two decoders and honest statuses: a codec zoo where every video PyAV can decode becomes a row, read
by PyAV first (decord where PyAV cannot), the same frames from both where both read (bit for bit for
8-bit video), damaged videos never plain ok, the decoders' own lines folded into the tool's one line per
video, the decoder recorded per video."""

import json
import random
import subprocess
import sys

import av
import decord
import h5py
import numpy as np
import pytest

from c3d_extract.extraction.decode import DecoderSettings, decode_frames
from c3d_extract.extraction.messages import End, Failed
from c3d_extract.extraction.inputs import VideoJob
from c3d_extract.models.registry import RES3D_SPORTS1M
from c3d_extract.extraction.decord_reader import DecordReader
from c3d_extract.extraction.pyav_reader import PyAVReader
from c3d_extract.extraction.reader_base import VideoError
from bench.support.videos import ZOO, encoder_available, moving_frames, write_video

RES3D_DECODER = DecoderSettings(RES3D_SPORTS1M.input)  # the decoders' settings of a Res3D run

ARGS = ["--model", "res3d", "--layers", "pool5", "--weights", "random", "--precision", "fp32", "-q"]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zoo")
    frames = moving_frames(24, 128, 160, seed=8)
    made, missing = [], []
    for name, codec, pix_fmt, tag in ZOO:
        if encoder_available(codec):
            write_video(folder / name, frames, codec, tag=tag, pix_fmt=pix_fmt)
            made.append(name)
        else:
            missing.append(f"{name} ({codec})")
    return folder, made, missing


@pytest.mark.slow
def test_every_video_of_the_zoo_pyav_can_decode_becomes_a_row(zoo, tmp_path):
    folder, made, missing = zoo
    if missing:
        print(f"no encoder here for: {', '.join(missing)}")  # shown with -rA / -s
    assert "h264.mp4" in made and "xvid.avi" in made
    out = tmp_path / "zoo.h5"
    result = subprocess.run([sys.executable, "-m", "c3d_extract", str(folder), str(out), *ARGS],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    # nothing but the tool's own lines on stderr: the decoders' native lines are folded in
    assert all(line.startswith("c3d-extract: ") for line in result.stderr.splitlines()), result.stderr
    with h5py.File(out) as f:
        rows = dict(zip(f["videos"].asstr()[()], zip(f["status"].asstr()[()], f["decoder"].asstr()[()],
                                                     f["num_frames"][()])))
    assert sorted(rows) == sorted(made)
    for name, (status, decoder, frames) in rows.items():
        assert status == "ok" and frames == 24, (name, status, frames)
        assert decoder == f"pyav {av.__version__}", (name, decoder)  # PyAV reads every codec of the zoo
    info = subprocess.run([sys.executable, "-m", "c3d_extract", "info", str(out), "--json"],
                          capture_output=True, text=True, check=True)
    counts = json.loads(info.stdout)["decoders"]
    assert counts == {decoder: sum(1 for _, d, _ in rows.values() if d == decoder) for decoder in counts}


EIGHT_BIT = ["h264.mp4", "h264_444.mkv", "hevc.mp4", "vp8.webm", "vp9.webm", "xvid.avi", "mjpeg.avi", "ffv1.mkv",
             "flv1.flv", "wmv2.avi"]


@pytest.mark.parametrize("name", EIGHT_BIT)
def test_both_decoders_give_the_same_frames_bit_for_bit_on_8_bit_video(zoo, name):
    """The reader order changed from decord first to PyAV first without changing a pixel: PyAV's frames
    (one reformatter per reader, converted into the chunk) equal decord 0.6.0's and PyAV's own
    `to_ndarray` of every frame (what the reader did before)."""
    folder, made, _ = zoo
    if name not in made:
        pytest.skip(f"no encoder here for {name}")
    path = str(folder / name)
    by_decord = np.concatenate(list(DecordReader(path).chunks()))
    by_pyav = np.concatenate(list(PyAVReader(path).chunks()))
    with av.open(path) as container:
        by_to_ndarray = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
    assert by_decord.shape == by_pyav.shape == (24, 128, 160, 3)
    assert np.array_equal(by_pyav, by_to_ndarray), name
    assert np.array_equal(by_pyav, by_decord), (name, np.abs(by_decord.astype(int) - by_pyav.astype(int)).max())


def test_10_bit_video_differs_between_the_decoders_and_pyav_is_nearer_the_source(zoo):
    """10-bit 4:2:0 is where the two FFmpegs' swscale differ (4.1 against 8.x; measured: a mean of ~2.5
    grey levels, most values, up to ~90 at sharp colour edges). PyAV reads it, and its frames are nearer
    the frames that were encoded than decord's: a row of such a video made by decord before differs
    from one made now (the row's `decoder` says which)."""
    folder, made, _ = zoo
    if "hevc_10bit.mkv" not in made:
        pytest.skip("no libx265 encoder in this PyAV build")
    path = str(folder / "hevc_10bit.mkv")
    by_decord = np.concatenate(list(DecordReader(path).chunks())).astype(int)
    by_pyav = np.concatenate(list(PyAVReader(path).chunks())).astype(int)
    source = moving_frames(24, 128, 160, seed=8).astype(int)
    assert by_decord.shape == by_pyav.shape == source.shape
    diff = np.abs(by_decord - by_pyav)
    print(f"10-bit HEVC: decord 0.6.0 against PyAV {av.__version__}: max {diff.max()}, mean {diff.mean():.2f}, "
          f"{(diff > 0).mean():.0%} of the values differ")
    assert diff.max() > 0 and diff.mean() < 5
    assert np.abs(by_pyav - source).mean() <= np.abs(by_decord - source).mean()


def test_av1_is_read_by_pyav_and_decord_cannot(zoo):
    folder, made, _ = zoo
    if "av1.mp4" not in made:
        pytest.skip("no AV1 encoder (libsvtav1) in this PyAV build")
    with pytest.raises(VideoError):
        DecordReader(str(folder / "av1.mp4"))
    items = list(decode_frames(VideoJob("av1.mp4", str(folder / "av1.mp4")), RES3D_DECODER))
    assert isinstance(items[-1], End) and items[-1].facts["decoder"].startswith("pyav ")
    assert {item.attempt for item in items} == {0}
    # in the order decord then PyAV, decord's failed open costs no frame
    items = list(decode_frames(VideoJob("av1.mp4", str(folder / "av1.mp4")), RES3D_DECODER,
                               readers=(DecordReader, PyAVReader)))
    assert isinstance(items[-1], End) and {item.attempt for item in items} == {1}


def substituting_mutation(source: bytes, seed: int = 7, tries: int = 400) -> bytes:
    """Flipped bits in a real H.264 file until decord would replace a frame by its neighbour
    (its fault tolerance says so), searched from a fixed seed: about 1 in 50 mutations does."""
    rng = random.Random(seed)
    for _ in range(tries):
        data = bytearray(source)
        for _ in range(rng.randint(1, 20)):
            at = rng.randrange(2000, len(data))
            data[at] ^= 1 << rng.randrange(8)
        path = "/dev/shm/c3d_mutation.mp4" if __import__("os").path.isdir("/dev/shm") else "c3d_mutation.mp4"
        with open(path, "wb") as handle:
            handle.write(data)
        try:
            reader = decord.VideoReader(path, num_threads=1, fault_tol="0.000001")
            reader.get_batch(list(range(len(reader)))).asnumpy()
        except decord._ffi.base.DECORDLimitReachedError:
            return bytes(data)
        except Exception:
            pass
    pytest.skip(f"no mutation out of {tries} made decord substitute a frame here")


@pytest.mark.slow
def test_a_video_decord_would_repair_is_never_plain_ok(tmp_path):
    clean = write_video(tmp_path / "clean.mp4", moving_frames(99, 120, 160, seed=3), bit_rate=400_000)
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "damaged.mp4").write_bytes(substituting_mutation(clean.read_bytes()))
    clean.rename(folder / "clean.mp4")
    out = tmp_path / "out.h5"
    result = subprocess.run([sys.executable, "-m", "c3d_extract", str(folder), str(out), *ARGS],
                            capture_output=True, text=True, timeout=300)
    assert all(line.startswith("c3d-extract: ") for line in result.stderr.splitlines()), result.stderr
    with h5py.File(out) as f:
        rows = dict(zip(f["videos"].asstr()[()], zip(f["status"].asstr()[()], f["decoder"].asstr()[()])))
        failed = f["failures/video"].asstr()[()].tolist()
    assert rows["clean.mp4"] == ("ok", f"pyav {av.__version__}")
    if "damaged.mp4" in rows:  # PyAV decoded it, and says how many frames FFmpeg repaired
        status, decoder = rows["damaged.mp4"]
        assert status.startswith("repaired:") and int(status.split(":")[1]) >= 1 and decoder.startswith("pyav ")
    else:
        assert failed == ["damaged.mp4"]


def test_a_real_corrupt_video_fails_whole_or_keeps_its_first_28_frames():
    from bench.support.videos import CORRUPT, shared_video

    path = str(shared_video(CORRUPT))
    items = list(decode_frames(VideoJob("c", path), RES3D_DECODER))
    assert isinstance(items[-1], Failed) and items[-1].stage == "decode"
    kept = list(decode_frames(VideoJob("c", path), DecoderSettings(RES3D_SPORTS1M.input, keep_partial=True)))
    assert isinstance(kept[-1], End) and kept[-1].facts["status"] == "partial:28"
    last = kept[-1].attempt
    assert sum(len(item.frames) for item in kept[:-1] if item.attempt == last) == 28
