"""`--engine ray` against a real multi-node Ray cluster that the tool did not start.

One cluster for the module (`ray.cluster_utils.Cluster`: a head and a second raylet on this machine,
one GCS, Ray's own processes), joined by the command line in a subprocess driver with
`--ray-address`, the way a user joins a cluster. Every run must write the same file as the local
engine, whatever happens to the run: a relative input folder, a FIFO that blocks its reader forever,
a worker node removed mid-run, a driver killed with SIGKILL and run again.
"""

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from c3d_extract.cli.extract import main
from c3d_extract.featurefile.journal_format import journal_path, pending
from tests.helpers import assert_same_file as assert_same_contents
from bench.support.videos import moving_frames, write_video

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'ray[data]'; the test extra has it)")
from ray.cluster_utils import Cluster  # noqa: E402

TIMEOUT = 30  # --timeout: seconds a decoder may make no progress (5 s: a CI run on 2 loaded cores lost a
# plain video of the local reference to it: its decoder, beside the network's threads, made no progress that long;
# 20 s held on an idle machine, and is raised for a machine with a second CPU-bound process beside the suite)
ARGS = ["--model", "res3d", "--layers", "pool5", "--weights", "random", "--seed", "4", "--device", "cpu",
        "--precision", "fp32", "--batch-size", "2", "--timeout", str(TIMEOUT)]
NODE = {"num_cpus": 2, "object_store_memory": 100 * 2**20}
def rows(path) -> dict:
    """key -> its pool5 row, and failed key -> (stage, error)."""
    with h5py.File(path, "r") as f:
        written = dict(zip(f["videos"].asstr()[:], f["features/pool5"][()]))
        failed = {k: (s, e) for k, s, e in zip(*(f["failures"][n].asstr()[:] for n in ("video", "stage", "error")))}
    return {"written": written, "failed": failed}


def assert_quiet(stderr: str) -> None:
    """Only the tool speaks on the terminal: no Ray log line (core_worker.cc, SIGTERM, restarts)."""
    for line in stderr.splitlines():
        assert not line.strip() or line.startswith("c3d-extract: "), f"not the tool's line on stderr: {line!r}"


@pytest.fixture(scope="module")
def cluster():
    """A head and one more raylet (two CPUs each), joined by address like any existing cluster."""
    started = Cluster(initialize_head=True, connect=False, head_node_args=NODE)
    started.add_node(**NODE)
    started.wait_for_nodes()
    yield started
    started.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """videos/ in a scratch folder: six short videos (1 to 4 clips), a broken file and a FIFO that
    nobody writes to (opening it blocks forever, like a decoder stuck inside a container)."""
    base = tmp_path_factory.mktemp("cluster")
    videos = base / "videos"
    (videos / "sub").mkdir(parents=True)
    for i in range(6):
        write_video(videos / ("sub" if i % 2 else ".") / f"v{i}.mp4", moving_frames(17 + 8 * i, 120, 160, seed=i))
    (videos / "broken.mp4").write_bytes(b"not a video")
    os.mkfifo(videos / "stuck.mp4")
    yield base
    try:  # free any reader still blocked on the FIFO (a decoder of a removed node, say)
        os.close(os.open(videos / "stuck.mp4", os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


@pytest.fixture(scope="module")
def reference(folder):
    """The local engine's file for videos/ (the FIFO is abandoned after --timeout there too)."""
    out = folder / "local.h5"
    result = CliRunner().invoke(main, [str(folder / "videos"), str(out), *ARGS, "-q"])
    assert result.exit_code == 1, result.output
    return out


def driver(cluster, folder, out: str, *extra: str) -> subprocess.Popen:
    """`c3d-extract videos OUT --engine ray --ray-address ADDR` run from `folder`: relative paths."""
    return subprocess.Popen([sys.executable, "-m", "c3d_extract", "videos", out, *ARGS, "--engine", "ray",
                             "--ray-address", cluster.address, *extra],
                            cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_records(folder, out: str, count: int, process: subprocess.Popen, limit: float = 400) -> None:
    """Until the run's journal holds `count` records (finished or failed videos): mid-run."""
    deadline = time.time() + limit
    while (pending(str(folder / out)) or 0) < count:
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, "the run made no progress"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def relative_run(folder, reference, cluster):  # the local reference runs before the cluster starts: a
    # new cluster's processes starting on 2 cores starved its decoder past the 5-s --timeout once
    """One run on the cluster with a relative input folder: (exit status, stderr, seconds)."""
    started = time.time()
    process = driver(cluster, folder, "relative.h5")
    _, stderr = process.communicate(timeout=240)
    return process.returncode, stderr, time.time() - started


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_relative_folder_on_a_cluster_writes_the_local_engines_file(relative_run, folder, reference):
    code, stderr, _ = relative_run
    assert code == 1, stderr  # broken.mp4 and stuck.mp4 fail, as they do locally
    assert "broken.mp4: open:" in stderr and "no such file" not in stderr
    assert_same_contents(folder / "relative.h5", reference)
    assert_quiet(stderr)


@pytest.mark.slow
def test_a_fifo_is_abandoned_after_the_timeout_and_the_others_are_written(relative_run, folder):
    code, stderr, seconds = relative_run
    result = rows(folder / "relative.h5")
    assert sorted(result["written"]) == ["sub/v1.mp4", "sub/v3.mp4", "sub/v5.mp4", "v0.mp4", "v2.mp4", "v4.mp4"]
    stage, error = result["failed"]["stuck.mp4"]
    assert (stage, error.split(":")[0]) == ("decode", f"no progress for {TIMEOUT} s")
    assert f"videos/stuck.mp4: decode: no progress for {TIMEOUT} s" in stderr
    # it ended (relative_run's communicate would have raised): a run with no decoder timeout never does


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_removing_a_worker_node_mid_run_gives_the_same_file(cluster, folder, reference):
    worker = next(node for node in cluster.list_all_nodes() if node is not cluster.head_node)
    process = driver(cluster, folder, "removed.h5")
    try:
        wait_for_records(folder, "removed.h5", 2, process)
        cluster.remove_node(worker)  # its raylet, object store and workers (decoders, maybe the network) die
        _, stderr = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            process.kill()
        cluster.add_node(**NODE)  # back to two nodes for the other tests
        cluster.wait_for_nodes()
    assert process.returncode == 1, stderr
    assert_same_contents(folder / "removed.h5", reference)
    assert_quiet(stderr)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_of_the_driver_then_the_same_command_gives_the_same_file(cluster, folder, reference):
    process = driver(cluster, folder, "killed.h5")
    wait_for_records(folder, "killed.h5", 2, process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    done_before = pending(str(folder / "killed.h5"))
    assert done_before and done_before < 8 and os.path.exists(journal_path(str(folder / "killed.h5")))
    again = driver(cluster, folder, "killed.h5")
    _, stderr = again.communicate(timeout=240)
    assert again.returncode == 1, stderr
    assert_same_contents(folder / "killed.h5", reference)
    assert "video(s) already done" in stderr  # the second run went on from the first's journal
    assert_quiet(stderr)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_two_drivers_on_one_cluster_with_shards_then_merge_give_the_local_file(cluster, folder, reference):
    """More than one writer, the way that works today: K drivers with --shard I/K on the same cluster at
    once, each writing its own file, then `merge`: the local engine's file."""
    drivers = [driver(cluster, folder, f"shard{i}.h5", "--shard", f"{i}/2") for i in range(2)]
    for process in drivers:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode in (0, 1), stderr  # the shard holding broken.mp4 or the FIFO reports it
        assert_quiet(stderr)
    merged = CliRunner().invoke(main, ["merge", str(folder / "merged.h5"), str(folder / "shard0.h5"),
                                       str(folder / "shard1.h5")])
    assert merged.exit_code == 0, merged.output
    assert_same_contents(folder / "merged.h5", reference, ignore_attrs=("merged_from",))


@pytest.mark.slow
def test_a_node_that_cannot_see_a_video_names_itself(cluster):
    """The decode actor's check, run on the cluster: a path absent on that node is one failure naming it."""
    from c3d_extract.extraction.ray_actors import _Decode
    from c3d_extract.options import ExtractOptions
    from c3d_extract.models.registry import get_spec

    @ray.remote(num_cpus=1)
    def decode(batch):
        rows = list(_Decode(get_spec("res3d").input, ExtractOptions(timeout=TIMEOUT))(batch))
        return rows, ray.get_runtime_context().get_node_id()

    ray.init(address=cluster.address, log_to_driver=False)
    try:
        out, node = ray.get(decode.remote({"key": np.array(["a/gone.mp4"], object),
                                           "path": np.array(["/nowhere/a/gone.mp4"], object)}))
    finally:
        ray.shutdown()
    [batch] = out
    assert list(batch["key"]) == ["a/gone.mp4"] and list(batch["kind"]) == ["fail"]
    failure = json.loads(batch["meta"][0])
    assert failure["stage"] == "open"
    assert failure["error"].startswith("no such file on ") and f"Ray node {node[:12]}" in failure["error"]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_s3_inputs_and_a_tar_shard_on_a_cluster_without_a_shared_folder(cluster, folder, tmp_path):
    """Every node fetches its objects itself (the endpoint and keys travel as --storage-options): the
    file equals the local engine's of the same s3:// prefix; run from a folder holding no video."""
    pytest.importorskip("s3fs", reason="s3fs is not installed (the test extra has it)")
    from bench.support.remote_servers import KEY, SECRET, S3Server
    from tests.test_remote import make_shard

    server = S3Server(tmp_path / "weed").start()
    try:
        fs = server.filesystem()
        fs.mkdir("media")
        for i in range(4):
            name = f"v{i}.mp4" if i % 2 == 0 else f"sub/v{i}.mp4"
            fs.put(str(folder / "videos" / name), f"media/set/{name}")
        make_shard(tmp_path / "00000.tar", {"v4.mp4": (folder / "videos/v4.mp4").read_bytes(), "v4.json": b"{}",
                                            "v5.mp4": (folder / "videos/sub/v5.mp4").read_bytes()})
        fs.put(str(tmp_path / "00000.tar"), "media/set/shards/00000.tar")
        options = ["--storage-options", f'{{"endpoint_url": "{server.endpoint}", "key": "{KEY}", "secret": "{SECRET}"}}']
        local = CliRunner().invoke(main, ["s3://media/set/", str(tmp_path / "local.h5"), *ARGS, *options, "-q"])
        assert local.exit_code == 0, local.output
        process = subprocess.Popen([sys.executable, "-m", "c3d_extract", "s3://media/set/", "cluster.h5", *ARGS,
                                    *options, "--engine", "ray", "--ray-address", cluster.address],
                                   cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
        assert_same_contents(tmp_path / "cluster.h5", tmp_path / "local.h5")
        with h5py.File(tmp_path / "cluster.h5", "r") as f:
            assert list(f["videos"].asstr()[:]) == ["shards/00000/v4.mp4", "shards/00000/v5.mp4", "sub/v1.mp4",
                                                     "sub/v3.mp4", "v0.mp4", "v2.mp4"]
        assert_quiet(stderr)
    finally:
        server.stop()
