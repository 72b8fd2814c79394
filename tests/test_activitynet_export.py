"""`export --format activitynet`: the release's layout, the PCA (fitted, this tool's file, the
official file's layout), refusals, the atomic write and a full disk. Values are checked against
scikit-learn's PCA and numpy by hand on the same rows."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from sklearn.decomposition import PCA as SkPCA

from c3d_extract.featurefile import pca as pca_file
from c3d_extract.featurefile.writer import ClipRows, FeatureStore
from c3d_extract.storage import EXIT_CODE
from tests.helpers import run
from bench.support.videos import moving_frames, write_video

SETTINGS = {"model": "c3d", "spec": "c3d-sports1m", "weights_sha256": "test", "layers": ["fc6", "fc7"],
            "clip_len": 16, "stride": 8, "frame_step": 1, "per_clip": True}
CLIPS = {"videos/v_AAA.mp4": 5, "videos/v_BBB.mp4": 1, "other/v_CCC.avi": 9, "v_DDD.mkv": 3, "x/v_EEE.mp4": 7}
DIM = 24


def spectrum_rows(n: int, dim: int, rng, offset: float = 0.0) -> np.ndarray:
    """Rows whose covariance has well-separated leading eigenvalues (9, 6, 4, 2.6, 1.7, ...) and a
    flat tail of 0.01, in a random orthonormal basis, around a non-zero mean, non-negative like
    ReLU outputs (the offset keeps them so)."""
    scales = np.concatenate([[3.0, 2.45, 2.0, 1.6, 1.3], np.full(dim - 5, 0.1)])
    basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    return (rng.standard_normal((n, dim)) * scales) @ basis.T + 10.0 + offset


def write_clip_file(path: Path, clips=CLIPS, settings=SETTINGS, dim=DIM, seed=0) -> dict[str, np.ndarray]:
    """A per-clip feature file in the tool's real layout (FeatureStore); returns key -> fc7 rows."""
    rng = np.random.default_rng(seed)
    layers = settings["layers"]
    rows = spectrum_rows(sum(clips.values()), dim, rng).astype(np.float32)
    out, at = {}, 0
    with FeatureStore.open(str(path), settings, {name: (dim,) for name in layers}, {"command_line": "test"}) as store:
        for key, count in clips.items():
            values = {name: rows[at: at + count] * (1 + i) for i, name in enumerate(layers)}
            at += count
            out[key] = values.get("fc7", values[layers[0]])
            facts = {"num_frames": 8 * count + 8, "num_clips": count, "fps": 25.0, "height": 240, "width": 320,
                     "status": "ok"}
            means = {name: v.mean(0) for name, v in values.items()}
            if settings.get("per_clip"):
                store.add_video(key, means, facts, clips=ClipRows([8 * i for i in range(count)], values))
            else:
                store.add_video(key, means, facts)
    return out


def sign_aligned(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """`values` with each column's sign flipped to agree with `reference`'s."""
    signs = np.sign(np.sum(values * reference, axis=0))
    return values * signs


def read_like_the_captioning_code(path: Path) -> dict[str, np.ndarray]:
    """How BMT, PDVC, 2D-TAN, DAPs read the release: every root key is a video, f[vid]["c3d_features"]."""
    with h5py.File(path, "r") as f:
        return {vid: f[vid]["c3d_features"][:] for vid in f.keys()}


@pytest.fixture
def clip_file(tmp_path):
    path = tmp_path / "clips.h5"
    return path, write_clip_file(path)


def test_export_with_pca_matches_sklearn_on_the_same_rows(clip_file, tmp_path):
    path, rows = clip_file
    out = tmp_path / "anet.hdf5"
    result = run("export", path, out, "--format", "activitynet", "--pca", 4)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""  # the file follows the release's protocol: no warning

    everything = np.concatenate(list(rows.values())).astype(np.float64)
    reference = SkPCA(4, svd_solver="full").fit(everything)
    loaded = read_like_the_captioning_code(out)
    assert sorted(loaded) == ["v_AAA", "v_BBB", "v_CCC", "v_DDD", "v_EEE"]
    for key, clips in rows.items():
        got = loaded[Path(key).stem]
        assert got.dtype == np.float32 and got.shape == (len(clips), 4)
        np.testing.assert_allclose(sign_aligned(got, reference.transform(clips)), reference.transform(clips),
                                   rtol=1e-5, atol=1e-4)
    with h5py.File(out, "r") as f:  # clip times beside the features, provenance in attributes
        group = f["v_CCC"]
        assert group["clip_first_frame"][()].tolist() == [8 * i for i in range(9)]
        np.testing.assert_allclose(group["clip_time"][()], np.arange(9) * 8 / 25.0)
        assert group.attrs["key"] == "other/v_CCC.avi" and group.attrs["num_frames"] == 80
        assert f.attrs["layer"] == "fc7" and f.attrs["pca"] == "4 components, centred, not whitened"
        assert f.attrs["normalisation"].startswith("none") and f.attrs["pca_file"] == str(tmp_path / "anet.pca.hdf5")

    fitted = pca_file.load(str(tmp_path / "anet.pca.hdf5"))  # the PCA's own file
    np.testing.assert_allclose(fitted.mean, reference.mean_, rtol=1e-9)
    np.testing.assert_allclose(fitted.explained_variance, reference.explained_variance_, rtol=1e-8)
    np.testing.assert_allclose(np.abs(np.sum(fitted.components * reference.components_, axis=1)), 1, atol=1e-9)
    with h5py.File(tmp_path / "anet.pca.hdf5", "r") as f:
        assert f.attrs["n_samples"] == 25 and f.attrs["layer"] == "fc7" and not f.attrs["whiten"]
        np.testing.assert_allclose(f["explained_variance_ratio"][()], reference.explained_variance_ratio_, rtol=1e-8)


def test_without_pca_the_rows_are_the_files_and_ids_can_be_keys_with_a_prefix(clip_file, tmp_path):
    path, rows = clip_file
    out = tmp_path / "raw.hdf5"
    assert run("export", path, out, "--format", "activitynet", "--ids", "key", "--id-prefix", "a_").exit_code == 2
    # a key with folders would become nested groups: refused with the option that avoids it
    result = run("export", path, out, "--format", "activitynet", "--id-prefix", "a_")
    assert result.exit_code == 0, result.output
    loaded = read_like_the_captioning_code(out)
    assert sorted(loaded) == ["a_v_AAA", "a_v_BBB", "a_v_CCC", "a_v_DDD", "a_v_EEE"]
    for key, clips in rows.items():
        np.testing.assert_array_equal(loaded["a_" + Path(key).stem], clips)


def test_incremental_fit_agrees_with_a_full_fit_on_the_leading_components():
    rng = np.random.default_rng(3)
    rows = spectrum_rows(3000, 64, rng, offset=1000.0)  # a large mean: cancellation would show
    chunks = (rows[i: i + 7] for i in range(0, len(rows), 7))
    ours = pca_file.fit(chunks, 12)
    full = SkPCA(12, svd_solver="full").fit(rows)
    # the five leading eigenvalues are well separated: same directions, same variances
    cosines = np.abs(np.sum(ours.components[:5] * full.components_[:5], axis=1))
    np.testing.assert_allclose(cosines, 1, atol=1e-9)
    np.testing.assert_allclose(ours.explained_variance, full.explained_variance_, rtol=1e-7)
    # the flat tail (all ~0.01) can rotate inside its subspace: compare the 12-d subspaces instead
    overlap = np.linalg.svd(ours.components @ full.components_.T, compute_uv=False)
    assert overlap.min() > 0.9
    np.testing.assert_allclose(ours.mean, rows.mean(0), rtol=1e-12)
    np.testing.assert_allclose(ours.components @ ours.components.T, np.eye(12), atol=1e-10)


def write_official_layout(path: Path, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A PCA file written the way ActivityNet's was (the out-of-core script: float32 mean (1, D),
    float32 scatter A'A of the centred rows, U, S, _ = svd(A'A), serialised as data/{U,S,x_mean})."""
    x_mean = rows.astype(np.float32).mean(0, keepdims=True)
    centred = rows.astype(np.float32) - x_mean
    u, s, _ = np.linalg.svd(centred.T @ centred)
    with h5py.File(path, "w") as f:
        f["type"] = ["dict"]  # hickle 1.x's record of what `data` holds
        for name, value in (("U", u), ("S", s), ("x_mean", x_mean)):
            f.create_dataset(f"data/{name}", data=value)
    return x_mean, u


def test_pca_from_this_tools_file_and_from_the_official_layout(clip_file, tmp_path):
    path, rows = clip_file
    run("export", path, tmp_path / "fit.hdf5", "--format", "activitynet", "--pca", 5)
    other = tmp_path / "other.h5"
    new_rows = write_clip_file(other, {"n/v_NEW.mp4": 4, "n/v_OLD.mp4": 2}, seed=7)

    # this tool's file: (x - mean) @ components.T, by hand from the file's datasets
    result = run("export", other, tmp_path / "a.hdf5", "--format", "activitynet", "--pca-from",
                 tmp_path / "fit.pca.hdf5")
    assert result.exit_code == 0, result.output
    with h5py.File(tmp_path / "fit.pca.hdf5", "r") as f:
        mean, components = f["mean"][()], f["components"][()]
    loaded = read_like_the_captioning_code(tmp_path / "a.hdf5")
    for key, clips in new_rows.items():
        np.testing.assert_allclose(loaded[Path(key).stem], (clips - mean) @ components.T, rtol=1e-5, atol=1e-5)

    # the official layout: (x - x_mean) @ U[:, :K], centred, not whitened, U's columns the components
    everything = np.concatenate(list(rows.values()))
    x_mean, u = write_official_layout(tmp_path / "PCA_activitynet_v1-3.hdf5", everything)
    result = run("export", other, tmp_path / "b.hdf5", "--format", "activitynet", "--pca-from",
                 tmp_path / "PCA_activitynet_v1-3.hdf5")
    assert result.exit_code == 2 and "holds 24 component(s), 500 asked" in result.output  # the release's 500
    result = run("export", other, tmp_path / "b.hdf5", "--format", "activitynet", "--pca-from",
                 tmp_path / "PCA_activitynet_v1-3.hdf5", "--pca", 3)
    assert result.exit_code == 0, result.output
    loaded = read_like_the_captioning_code(tmp_path / "b.hdf5")
    reference = SkPCA(3, svd_solver="full").fit(everything.astype(np.float64))
    for key, clips in new_rows.items():
        by_hand = (clips.astype(np.float64) - x_mean) @ u[:, :3]
        np.testing.assert_allclose(loaded[Path(key).stem], by_hand, rtol=1e-4, atol=1e-4)
        # and that is scikit-learn's centred, unwhitened PCA of the same rows, up to each sign
        np.testing.assert_allclose(sign_aligned(by_hand, reference.transform(clips)), reference.transform(clips),
                                   rtol=1e-3, atol=1e-3)
    with h5py.File(tmp_path / "b.hdf5", "r") as f:
        assert "ActivityNet" in f.attrs["pca_provenance"] and "U[:, :K]" in f.attrs["pca_provenance"]


def test_refusals_name_the_file_and_the_command_that_makes_a_right_one(tmp_path):
    make = "c3d-extract videos/ clips.h5 --per-clip --layers fc7"
    no_clips = tmp_path / "means.h5"
    write_clip_file(no_clips, settings={**SETTINGS, "per_clip": False})
    fc6_only = tmp_path / "fc6.h5"
    write_clip_file(fc6_only, settings={**SETTINGS, "layers": ["fc6"]})
    stride16 = tmp_path / "stride16.h5"
    write_clip_file(stride16, settings={**SETTINGS, "stride": 16})
    for source, reason in ((no_clips, "has no per-clip rows"), (fc6_only, "has no per-clip fc7 (its per-clip "
                                                                         "layers: fc6)"),
                           (stride16, "made with stride 16")):
        result = run("export", source, tmp_path / "o.hdf5", "--format", "activitynet")
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and str(source) in lines[0] and reason in lines[0] and make in lines[0], lines
        assert not (tmp_path / "o.hdf5").exists()
    # another protocol on purpose: exported, with the difference said and recorded
    result = run("export", stride16, tmp_path / "o.hdf5", "--format", "activitynet", "--any-protocol")
    assert result.exit_code == 0 and "made with stride 16" in result.stderr
    with h5py.File(tmp_path / "o.hdf5", "r") as f:
        assert "stride 16" in f.attrs["protocol_notes"]
    # an existing OUT is kept without --overwrite; npy export keeps its own options
    assert "exists; use --overwrite" in run("export", stride16, tmp_path / "o.hdf5", "--format", "activitynet",
                                           "--any-protocol").stderr
    assert "only with --format activitynet" in run("export", stride16, tmp_path / "npy", "--pca", 3).stderr
    assert not (tmp_path / "npy").exists()


def run_limited(args: list, limit: int) -> subprocess.CompletedProcess:
    """A real `python -m c3d_extract` with every file it writes limited to `limit` bytes (EFBIG)."""
    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return subprocess.run([sys.executable, "-m", "c3d_extract", *map(str, args)], capture_output=True, text=True,
                          timeout=600, preexec_fn=limited)


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_leaves_out_as_it_was(tmp_path):
    path = tmp_path / "clips.h5"
    write_clip_file(path, {f"v/v_{i:03d}.mp4": 40 for i in range(20)}, dim=512)
    out = tmp_path / "anet.hdf5"
    args = ["export", path, out, "--format", "activitynet", "--overwrite"]
    first = run_limited(args, 1 << 30)
    assert first.returncode == 0, first.stderr
    before = out.read_bytes()
    size = len(before)
    # the reservation (clip rows alone) and a write past it (HDF5's own metadata) both fail cleanly
    for limit in (size // 3, size - 2000):
        result = run_limited(args, limit)
        assert result.returncode == EXIT_CODE, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert f"{out}.tmp-" in lines[0] and "(EFBIG)" in lines[0] and f"{out} is as it was" in lines[0], lines[0]
        assert "run the same command again" in lines[0]
        assert out.read_bytes() == before  # the earlier export, whole
        assert sorted(p.name for p in tmp_path.iterdir()) == ["anet.hdf5", "clips.h5"]  # no temporary file
    # the PCA's own file on a full disk: the same one line, nothing left
    result = run_limited(["export", path, tmp_path / "b.hdf5", "--format", "activitynet", "--pca", 8], 20_000)
    assert result.returncode == EXIT_CODE and "b.pca.hdf5.tmp-" in result.stderr and "(EFBIG)" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["anet.hdf5", "clips.h5"]


def test_a_killed_exports_temporary_file_is_removed_by_the_next(clip_file, tmp_path):
    path, _ = clip_file
    gone = subprocess.Popen(["true"])
    gone.wait()
    (tmp_path / f"anet.hdf5.tmp-{gone.pid}").write_bytes(b"half an export")
    assert run("export", path, tmp_path / "anet.hdf5", "--format", "activitynet").exit_code == 0
    assert not (tmp_path / f"anet.hdf5.tmp-{gone.pid}").exists()
    assert len(read_like_the_captioning_code(tmp_path / "anet.hdf5")) == 5


@pytest.mark.slow
def test_a_real_per_clip_fc7_run_exports(tmp_path):
    """Through the extraction itself: C3D, random weights, 40 frames -> clips at 0, 8, 16, 24 (32
    does not fit), fc7 after ReLU, then --pca 2 against scikit-learn on the file's own rows."""
    (tmp_path / "videos").mkdir()
    write_video(tmp_path / "videos" / "v_tiny.mp4", moving_frames(40, 64, 96, seed=5))
    clips = tmp_path / "clips.h5"
    result = run(tmp_path / "videos", clips, "--per-clip", "--layers", "fc7", "--weights", "random",
                 "--precision", "fp32", "-q")
    assert result.exit_code == 0, result.output
    result = run("export", clips, tmp_path / "anet.hdf5", "--format", "activitynet", "--pca", 2)
    assert result.exit_code == 0, result.output
    with h5py.File(clips, "r") as f:
        fc7 = f["clips/fc7"][()].astype(np.float64)
    assert fc7.shape == (4, 4096) and fc7.min() >= 0
    with h5py.File(tmp_path / "anet.hdf5", "r") as f:
        got = f["v_tiny"]["c3d_features"][:]
        assert f["v_tiny"]["clip_first_frame"][()].tolist() == [0, 8, 16, 24]
    reference = SkPCA(2, svd_solver="full").fit(fc7)
    np.testing.assert_allclose(sign_aligned(got, reference.transform(fc7)), reference.transform(fc7),
                               rtol=1e-3, atol=1e-3 * np.abs(reference.transform(fc7)).max())
    assert os.path.exists(tmp_path / "anet.pca.hdf5")
