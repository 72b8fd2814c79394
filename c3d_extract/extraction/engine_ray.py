"""`--engine ray`: the same extraction on Ray Data, on a laptop or a cluster the tool did not start.

Videos travel in blocks of several (absolute paths: a job means the same file on every node). Each
block is decoded by a CPU actor, the network runs as an actor pool (ray_actors.py: `_Decode`,
`_Forward`), and the forward actors send one row per video: most videos arrive as their whole
journal record, computed on the actor, which the driver (ray_driver.py) appends to the same
crash-safe store as the local engine's, so both write the same file.

A node or actor that dies costs the block it held: Ray restarts the actor and runs the block again
(Ray Data's default for actor pools; the driver drops the rows it already has), and a block whose
task raises is skipped (`max_errored_blocks`): its unfinished videos are recorded as failed, so
`--retry-failed` redoes them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from typing import Optional, Sequence

from c3d_extract.errors import UsageError
from c3d_extract.extraction.attempts import Attempts
from c3d_extract.extraction.inputs import VideoJob
from c3d_extract.extraction.collector import Collector, Failed, OnVideo, Sink, Summary
from c3d_extract.extraction.pipeline import BatchRunner
from c3d_extract.extraction.plan import require_ray
from c3d_extract.extraction.ray_actors import _Decode, _Forward
from c3d_extract.extraction.ray_driver import Driver
from c3d_extract.extraction.ray_logs import QuietRay
from c3d_extract.extraction.remote import is_url
from c3d_extract.models.preprocess import InputSpec
from c3d_extract.options import RAY_CONNECT_TIMEOUT, ExtractOptions

FORWARD_CALL_BYTES = 256 << 20  # the clips of one forward actor call, at most (several network batches)
FORWARD_CALL_BATCHES = 8  # network batches per forward actor call, at most
VIDEOS_PER_CALL_STEP = 256  # a run has this many videos per network batch a forward call holds, at least
MAX_VIDEOS_PER_BLOCK = 64  # a block is the unit Ray redoes when a node dies; each also starts a decoder
_LOST = "not processed: the Ray task that held this video failed (Ray's logs say why; {})"


def clips_per_call(input_spec: InputSpec, batch_size: int, videos: int) -> int:
    """Clips per forward actor call: several network batches (FORWARD_CALL_BATCHES, within
    FORWARD_CALL_BYTES of frames), so the driver receives one result chunk per ~20 videos rather than
    per ~3: Ray's cost per chunk on the driver (deserialising and joining its columns) is paid per
    call. Ray waits for a call's clips before it starts it, so a run of few videos (under
    VIDEOS_PER_CALL_STEP per extra batch) keeps one batch per call and its results stream at once."""
    clip_bytes = input_spec.frames * input_spec.crop[0] * input_spec.crop[1] * 3
    batches = min(FORWARD_CALL_BATCHES, FORWARD_CALL_BYTES // (batch_size * clip_bytes),
                  videos // VIDEOS_PER_CALL_STEP)
    return batch_size * max(1, batches)


def videos_per_block(videos: int, decoders: int) -> int:
    """Videos per Ray block: about two blocks per decoder so they share the work out, and at most
    MAX_VIDEOS_PER_BLOCK, which bounds what a lost node costs. Each block starts one decoder process
    (Python and the decoders imported), so blocks are not made smaller."""
    return max(1, min(MAX_VIDEOS_PER_BLOCK, math.ceil(videos / max(1, 2 * decoders))))


def extract_ray(jobs: Sequence[VideoJob], network: BatchRunner, store: Sink,
                options: ExtractOptions = ExtractOptions(), on_video: Optional[OnVideo] = None,
                per_block: Optional[int] = None) -> Summary:
    """Extract `jobs` with Ray Data into `store` (a FeatureStore or api.Arrays): the cluster at `options.ray_address` (e.g. "auto",
    "host:6379", "ray://host:10001"), else $RAY_ADDRESS's, else a new local Ray. Failures are recorded,
    never raised.

    A decoder that makes no progress for `options.timeout` seconds is abandoned and its video recorded
    as failed. `per_block` fixes the videos per Ray block (default: videos_per_block). URL inputs are
    fetched by each node itself with `options.storage_options` (fsspec's): they need no shared file
    system. A cluster that cannot be joined within `options.ray_connect_timeout` seconds raises
    UsageError (nothing written).
    """
    ray = require_ray()
    started = time.perf_counter()
    # relative paths mean another file, or none, on a worker whose working directory differs
    jobs = [job if is_url(job.path) else VideoJob(job.key, os.path.abspath(job.path), job.members, job.skip)
            for job in jobs]
    with QuietRay() as quiet:
        ours = not ray.is_initialized()
        if ours:  # no address: $RAY_ADDRESS, else a new local Ray (never whichever cluster ran last here)
            connect(ray, options.ray_address or os.environ.get("RAY_ADDRESS") or "local",
                    options.ray_connect_timeout, quiet)
        quiet.move_to(_session_logs(ray))
        context = ray.data.DataContext.get_current()  # the process's: put back what we change
        saved = (context.enable_progress_bars, context.execution_options.preserve_order,
                 context.max_errored_blocks)
        context.enable_progress_bars = False
        context.execution_options.preserve_order = False
        context.max_errored_blocks = -1  # a block whose task fails costs its videos (recorded), not the run
        try:
            summary = _run(ray, jobs, network, store, options, on_video, per_block, quiet.path)
            summary.seconds = time.perf_counter() - started
            return summary
        finally:
            (context.enable_progress_bars, context.execution_options.preserve_order,
             context.max_errored_blocks) = saved
            if ours:
                ray.shutdown()


def connect(ray, address: str, timeout: float = RAY_CONNECT_TIMEOUT, quiet: Optional[QuietRay] = None) -> None:
    """ray.init(address), given `timeout` seconds: Ray retries an address it cannot reach for minutes
    without a word (its errors go to `quiet`'s log file, off the terminal). UsageError naming the
    address, Ray's reason (its last error line) and the log file when it does not succeed in time;
    Ray's threads, still trying, go on writing to that file, not to the terminal (QuietRay.hold). "local" starts a
    new Ray here: that takes as long as it takes (seconds to a minute on a loaded machine)."""
    if address == "local":
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        return
    outcome: list = []

    def join() -> None:
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
            outcome.append(None)
        except BaseException as exc:  # reported by the caller's thread
            outcome.append(exc)

    thread = threading.Thread(target=join, name="c3d-ray-connect", daemon=True)
    thread.start()
    thread.join(timeout)
    if outcome and outcome[0] is None:
        return
    log = quiet.path if quiet is not None else None
    if quiet is not None:
        quiet.hold()
    if outcome:
        reason = " ".join(str(outcome[0]).split()) or type(outcome[0]).__name__
    else:
        reason = _last_error(log) or "no answer"
        reason = f"no connection within {timeout:g} s (--ray-connect-timeout): {reason}"
    where = f"; Ray's messages are in {log}" if log else ""
    hint = ""
    if address.split("://")[-1].split(":")[0] in ("127.0.0.1", "localhost"):
        hint = (" (a cluster started with --node-ip-address=127.0.0.1 is joined from the head itself with "
                "--ray-address auto; from elsewhere start it on the host's address)")
    raise UsageError(f"cannot join the Ray cluster at {address}: {reason}{hint}{where}")


def _last_error(log: Optional[str]) -> str:
    """The last line Ray logged at warning level or above in the driver's log file, cleaned."""
    try:
        with open(log or "", "rb") as handle:
            handle.seek(max(0, os.fstat(handle.fileno()).st_size - 65536))
            lines = handle.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        if any(mark in line for mark in (" E ", " W ", "ERROR", "WARNING", "Error", "Failed")):
            return " ".join(line.split())[-300:]
    return ""


def _session_logs(ray) -> Optional[str]:
    """Ray's log folder on this node (None where Ray does not say, e.g. a ray:// client)."""
    try:
        node = ray._private.worker._global_node
        return os.path.join(node.get_session_dir_path(), "logs") if node is not None else None
    except Exception:  # a private attribute: absent in some Ray versions
        return None


def _run(ray, jobs: Sequence[VideoJob], network: BatchRunner, store: Sink, options: ExtractOptions,
         on_video: Optional[OnVideo], per_block: Optional[int], log: Optional[str]) -> Summary:
    """The Ray Data job of extract_ray on a joined cluster: its summary, less the seconds."""
    cpus = int(ray.cluster_resources().get("CPU", 1))
    gpus = int(ray.cluster_resources().get("GPU", 0)) if network.runtime.device.type == "cuda" else 0
    decoders = max(1, cpus - (0 if gpus else 1))  # on CPU, one core is the network's
    per_block = per_block or videos_per_block(len(jobs), decoders)
    collector = Collector(store, on_video, grouped=True, attempts=Attempts())
    driver = Driver(jobs, collector, network.layers)
    if jobs:
        net = ray.put(network.net.to("cpu").float())  # the actors prepare their own copy
        dataset = ray.data.from_items([{"key": job.key, "path": job.path,
                                        "members": json.dumps(job.members) if job.is_shard else "",
                                        "skip": json.dumps(sorted(job.skip))} for job in jobs],
                                      override_num_blocks=math.ceil(len(jobs) / per_block))
        dataset = dataset.map_batches(
            _Decode, batch_size=per_block, batch_format="numpy", num_cpus=1,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=decoders),
            fn_constructor_kwargs={"input_spec": network.input_spec, "options": options})
        dataset = dataset.map_batches(
            _Forward, batch_size=clips_per_call(network.input_spec, network.batch_size, len(jobs)),
            batch_format="numpy", num_gpus=1 if gpus else 0,
            compute=ray.data.ActorPoolStrategy(size=max(1, gpus)),
            fn_constructor_kwargs={"net": net, "layers": network.layers, "input_spec": network.input_spec,
                                   "runtime": network.runtime, "batch_size": network.batch_size,
                                   "per_clip": store.wants_clips})
        try:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                driver.absorb(batch)
        finally:
            driver.commit()  # what was absorbed is durable before the run ends, however it ends
    log_hint = f"this driver's: {log}" if log else "see the Ray session's logs folder"
    for job in jobs:  # in the order given, so the records do not depend on the set's order
        if job.key in driver.pending:
            collector.fail(Failed(job.key, "decode", _LOST.format(log_hint)))
    collector.commit()
    return collector.summary
