"""Fault isolation and bounded memory: a hanging decoder is abandoned after --timeout, a decoder
process that dies costs one video, and reading a long video costs what a short one does."""

import os
import signal
import subprocess
import sys
import threading
import time

import h5py
import pytest
from click.testing import CliRunner

from c3d_extract.cli.extract import main
from c3d_extract.extraction.inputs import VideoJob, find_videos
from c3d_extract.models.registry import RES3D_SPORTS1M
from c3d_extract.extraction.pipeline import BatchRunner, extract
from c3d_extract.extraction.runtime import Runtime
from c3d_extract.options import ExtractOptions
from c3d_extract.weights.load import load_weights
from tests.helpers import REPO, load_bench as load
from bench.support.videos import moving_frames, write_video


@pytest.mark.slow
def test_a_hanging_input_is_abandoned_after_the_timeout(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    os.mkfifo(folder / "stuck.mp4")  # opening it for reading waits forever for a writer
    write_video(folder / "good.mp4", moving_frames(20, 64, 96))
    result = CliRunner().invoke(main, [str(folder), str(tmp_path / "o.h5"), "--model", "res3d", "--layers", "pool5",
                                       "--weights", "random", "--workers", "1", "--timeout", "10", "-q"])
    # the message proves --timeout was honoured (the default is 300 s); no wall clock: a loaded machine
    # may take long, and a run that never abandoned the FIFO is stopped by pytest-timeout
    assert result.exit_code == 1 and "no progress for 10 s" in result.stderr
    with h5py.File(tmp_path / "o.h5") as f:
        assert f["videos"].asstr()[()].tolist() == ["good.mp4"]
        assert f["failures/video"].asstr()[()].tolist() == ["stuck.mp4"]


def _decode_workers() -> list[int]:
    """Our spawned decoder processes (children running multiprocessing's spawn_main)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read()
        except OSError:
            continue
        if ppid == os.getpid() and b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            pids.append(int(entry))
    return pids


@pytest.mark.slow
def test_a_decoder_process_that_dies_costs_one_video(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write_video(folder / "a_long.mp4", moving_frames(1200, 48, 64, seed=1))
    for i in range(2):
        write_video(folder / f"b_short{i}.mp4", moving_frames(20, 48, 64, seed=2 + i))
    jobs, _ = find_videos([str(folder)])
    network = BatchRunner(load_weights("random", "res3d").net, ["pool5"], RES3D_SPORTS1M.input,
                      Runtime(__import__("torch").device("cpu"), "fp32"), 2)

    class Sink:
        wants_clips = False

        def __init__(self):
            self.rows, self.failed = {}, {}

        def add_video(self, key, features, facts):
            self.rows[key] = features

        def add_failure(self, key, stage, error):
            self.failed[key] = error

    def crash_the_decoder():  # as a segfault in FFmpeg would: the process is gone mid-video
        deadline = time.time() + 120
        while time.time() < deadline and not _decode_workers():
            time.sleep(0.1)
        time.sleep(1.0)
        for pid in _decode_workers():
            os.kill(pid, signal.SIGKILL)

    killer = threading.Thread(target=crash_the_decoder)
    killer.start()
    sink = Sink()
    extract(jobs, network, sink, ExtractOptions(workers=1))
    killer.join()
    assert "killed by SIGKILL" in sink.failed["a_long.mp4"]
    assert sorted(sink.rows) == ["b_short0.mp4", "b_short1.mp4"]


def test_a_prestarted_decoder_is_taken_and_a_dead_spare_skipped(tmp_path):
    from c3d_extract.extraction import workers
    from c3d_extract.extraction.assemble import Clip, Finished
    from c3d_extract.extraction.decode import DecoderSettings

    video = write_video(tmp_path / "a.mp4", moving_frames(24, 48, 64))
    workers.prestart(2)
    dead, alive = workers._SPARES[:2]
    dead.process.kill()
    dead.process.join(timeout=10)
    pool = workers.DecodePool([VideoJob("a.mp4", str(video))], DecoderSettings(RES3D_SPORTS1M.input), "loop",
                              workers=1)
    try:
        assert pool._workers[0].process.pid == alive.process.pid
        items = list(pool)
    finally:
        pool.close()
    assert [type(item) for item in items] == [Clip, Clip, Finished]  # windows at frames 0 and 8
    assert workers._SPARES == []


@pytest.mark.slow
def test_reading_a_long_video_costs_what_a_short_one_does(tmp_path):
    bench = load("memory")
    short, long = tmp_path / "short.mp4", tmp_path / "long.mp4"
    bench.write_long_video(str(short), 500)
    bench.write_long_video(str(long), 15000)  # 10 minutes: 15000 x 112 x 112 x 3 = 538 MiB if held at once
    short_clips, short_rss, _ = bench.peak(str(short))
    long_clips, long_rss, _ = bench.peak(str(long))
    assert long_clips == (15000 - 16) // 8 + 1 and short_clips == (500 - 16) // 8 + 1
    assert long_rss - short_rss < 80, (short_rss, long_rss)


PARENT = """
import sys, time
from c3d_extract.extraction.decode import DecoderSettings
from c3d_extract.extraction.inputs import VideoJob
from c3d_extract.extraction.workers import DecodePool
from c3d_extract.models.registry import C3D_SPORTS1M
if __name__ == "__main__":
    pool = DecodePool([VideoJob("v", sys.argv[1])], DecoderSettings(C3D_SPORTS1M.input), "loop", workers=1)
    next(iter(pool))  # one clip taken, then nobody releases the ring: the decoder fills it and waits
    print(pool._workers[0].process.pid, flush=True)
    time.sleep(600)
"""


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as handle:
            return any(line.split()[1] == "Z" for line in handle if line.startswith("State:"))  # a zombie
    except FileNotFoundError:
        return True


@pytest.mark.slow
def test_a_decoder_waiting_on_a_full_ring_ends_when_the_batching_process_is_killed(tmp_path):
    video = write_video(tmp_path / "long.mp4", moving_frames(900, 48, 64, seed=9))  # 900 frames > one ring
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(video)], stdout=subprocess.PIPE, text=True,
                              cwd=str(REPO))
    try:
        decoder = int(parent.stdout.readline())
        time.sleep(3)  # the decoder fills the ring's 445 frames and waits for a release
        assert not _gone(decoder)
        parent.kill()
        parent.wait(timeout=10)
        deadline = time.time() + 120  # a bound, not a speed: the loop ends as soon as it is gone
        while not _gone(decoder) and time.time() < deadline:
            time.sleep(0.2)
        assert _gone(decoder), "the decoder outlived the process it decoded for"
    finally:
        parent.kill()
