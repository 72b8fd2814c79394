"""`--engine ray`: the same extraction on Ray Data, on a laptop or a cluster the tool did not start.

Videos travel in blocks of several (absolute paths: a job means the same file on every node). Each
block is decoded by a CPU actor that runs the local engine's decoder-process pool (workers.DecodePool)
over it, so the per-video `--timeout` and the replacement of a crashed or hanging decoder work
exactly as they do locally: a FIFO or an endless stream costs its own video, never the job. The
network runs as an actor pool (`map_batches`, one actor per GPU on CUDA, else one on the CPU), and
the driver collects clip activations into the same running means and crash-safe store as the local
engine, so both write the same file.

A node or actor that dies costs the block it held: Ray restarts the actor and runs the block again
(Ray Data's default for actor pools; the driver drops the rows it already has), and a block whose
task raises is skipped (`max_errored_blocks`): its unfinished videos are recorded as failed, so
`--retry-failed` redoes them.

Every row has the same columns so the dataset has one schema: `kind` is clip, last (a clip that also
carries its video's facts, so a one-clip video is one row), done, or fail; `meta` carries a video's
facts or its error as JSON; `frames` is a clip (zeros for done and fail rows).
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from c3d_extract.errors import UsageError
from c3d_extract.extraction.decode import DecoderSettings, ShardRead
from c3d_extract.extraction.inputs import VideoJob
from c3d_extract.extraction.remote import is_url
from c3d_extract.extraction.pipeline import BatchRunner, Clip, Collector, Failed, Finished, Summary
from c3d_extract.extraction.ray_logs import QuietRay
from c3d_extract.featurefile.writer import FeatureStore

MAX_VIDEOS_PER_BLOCK = 64  # a block is the unit Ray redoes when a node dies; each also starts a decoder
_WARM_UP = "\0warm-up"  # a key no video has: keys are paths
_LOST = "not processed: the Ray task that held this video failed (Ray's logs say why; {})"


def require_ray():
    """The ray module, or UsageError naming the install that brings Ray Data."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UsageError("--engine ray needs Ray Data: pip install 'ray[data]' (or this package's [ray] extra)") from None
    return ray


def node_name() -> str:
    """This process's host and Ray node, for messages about what one node cannot see."""
    try:
        import ray

        node = ray.get_runtime_context().get_node_id()[:12]
    except Exception:  # not in a Ray worker
        node = "?"
    return f"{socket.gethostname()}, Ray node {node}"


class _Rows:
    """Output rows of one decode call, turned into a numpy batch on `take`."""

    def __init__(self, blank: np.ndarray):
        self.blank = blank
        self.key: list[str] = []
        self.kind: list[str] = []
        self.meta: list[str] = []
        self.start: list[int] = []
        self.frames: list[np.ndarray] = []

    def add(self, key: str, kind: str, meta: str = "", start: int = 0,
            frames: Optional[np.ndarray] = None) -> None:
        self.key.append(key)
        self.kind.append(kind)
        self.meta.append(meta)
        self.start.append(start)
        self.frames.append(self.blank if frames is None else frames)

    def __len__(self) -> int:
        return len(self.key)

    def take(self) -> dict:
        batch = {"key": np.array(self.key, dtype=object), "kind": np.array(self.kind, dtype=object),
                 "meta": np.array(self.meta, dtype=object), "start": np.array(self.start, np.int64),
                 "frames": np.stack(self.frames)}
        self.__init__(self.blank)
        return batch


def _done_meta(item: Finished) -> str:
    return json.dumps({"num_clips": item.num_clips, "facts": item.facts, "attempt": item.attempt})


class _Decode:
    """Ray map_batches actor: a block of video rows -> their clip rows, each video ending in a last,
    done or fail row. Decoding runs in a DecodePool of one decoder process per call (the actor only
    relays), so a decoder that hangs for `timeout` seconds or crashes costs its own video."""

    def __init__(self, spec, short: str, timeout: float, rows_per_batch: int = 16, keep_partial: bool = False,
                 storage: Optional[dict] = None):
        self.spec, self.short, self.timeout, self.keep_partial = spec, short, timeout, keep_partial
        self.storage = storage
        self.rows_per_batch = rows_per_batch
        self.blank = np.zeros((spec.frames, *spec.crop, 3), np.uint8)
        self.node = node_name()

    def __call__(self, batch: dict) -> Iterator[dict]:
        from c3d_extract.extraction.workers import DecodePool

        rows = _Rows(self.blank)
        jobs = []
        blank = [""] * len(batch["key"])  # rows of plain videos may come without the shard columns
        for key, path, members, skip in zip(batch["key"], batch["path"], batch.get("members", blank),
                                            batch.get("skip", ["[]"] * len(blank))):
            key, path = str(key), str(path)
            members = tuple(json.loads(str(members))) if members else None
            if is_url(path) or os.path.lexists(path):
                jobs.append(VideoJob(key, path, members, frozenset(json.loads(str(skip)))))
            else:  # on a cluster, the likely reason is a folder this node does not mount
                rows.add(key, "fail", json.dumps({"stage": "open", "error": (
                    f"no such file on {self.node} (a cluster needs the videos at the same path on "
                    f"every node)")}))
        if not jobs:
            yield rows.take()
            return
        held: dict[str, Clip] = {}  # each video's latest clip, sent with its Finished as one row
        warm = []  # set once the decoder process has answered
        settings = DecoderSettings(self.spec, keep_partial=self.keep_partial, storage=self.storage)
        pool = DecodePool(self._warm_first(jobs, warm), settings, self.short, 1, self.timeout)
        try:
            for item in pool:
                if item.key == _WARM_UP:
                    if isinstance(item, Failed) and item.stage == "open":
                        warm.append(True)
                elif isinstance(item, ShardRead):
                    rows.add(item.key, "read")
                elif isinstance(item, Clip):
                    if item.key in held:
                        previous = held[item.key]
                        # meta: the decoder attempt (decode.py), so the driver drops a restarted video's old clips
                        rows.add(previous.key, "clip", str(previous.attempt), previous.start, previous.frames)
                    item.frames = np.array(item.frames)  # its own copy: the view would hold the cutter's buffer
                    held[item.key] = item
                elif isinstance(item, Finished):
                    clip = held.pop(item.key, None)
                    if clip is None:
                        rows.add(item.key, "done", _done_meta(item))
                    else:
                        rows.add(item.key, "last", _done_meta(item), clip.start, clip.frames)
                else:
                    held.pop(item.key, None)  # a failed video is whole or absent: its clips are dropped
                    rows.add(item.key, "fail", json.dumps({"stage": item.stage, "error": item.error}))
                if len(rows) >= self.rows_per_batch:
                    yield rows.take()
        finally:
            pool.close()
        if len(rows):
            yield rows.take()

    @staticmethod
    def _warm_first(jobs: list[VideoJob], warm: list) -> Iterator[VideoJob]:
        """`jobs`, after a placeholder that fails at once ("no such file") as soon as the new decoder
        process runs: the pool's clock for a job starts when the job is sent, and a decoder's start
        (Python and torch imported, seconds on a busy node) must not count against a real video's
        --timeout. Asked for lazily, so a placeholder that timed out is followed by another (twice)."""
        for _ in range(3):
            if warm:
                break
            yield VideoJob(_WARM_UP, "")
        yield from jobs


class _Forward:
    """Ray map_batches actor: the prepared network, built once per actor."""

    def __init__(self, net, layers, spec, runtime, batch_size: int):
        ray = require_ray()
        if isinstance(net, ray.ObjectRef):  # the weights travel once through the object store
            net = ray.get(net)
        self.network = BatchRunner(net, layers, spec, runtime, batch_size)

    def __call__(self, batch: dict) -> dict:
        clips = np.flatnonzero(np.isin(batch["kind"], ("clip", "last")))
        out = {"key": batch["key"], "kind": batch["kind"], "meta": batch["meta"], "start": batch["start"]}
        values = self.network(batch["frames"][clips]) if len(clips) else {}
        for layer in self.network.layers:
            column = np.zeros((len(batch["key"]), 1), np.float32)
            if len(clips):
                column = np.zeros((len(batch["key"]), values[layer].shape[1]), np.float32)
                column[clips] = values[layer]
            out[f"out_{layer}"] = column
        return out


def videos_per_block(videos: int, decoders: int) -> int:
    """Videos per Ray block: about two blocks per decoder so they share the work out, and at most
    MAX_VIDEOS_PER_BLOCK, which bounds what a lost node costs. Each block starts one decoder process
    (Python and the decoders imported), so blocks are not made smaller."""
    return max(1, min(MAX_VIDEOS_PER_BLOCK, math.ceil(videos / max(1, 2 * decoders))))


def extract_ray(jobs: Sequence[VideoJob], network: BatchRunner, store: FeatureStore, short: str = "loop",
                address: Optional[str] = None,
                on_video: Optional[Callable[[str, Optional[Failed], Summary], None]] = None,
                timeout: float = 300.0, per_block: Optional[int] = None, keep_partial: bool = False,
                storage: Optional[dict] = None) -> Summary:
    """Extract `jobs` with Ray Data into `store`: the cluster at `address` (e.g. "auto", "host:6379",
    "ray://host:10001"), else $RAY_ADDRESS's, else a new local Ray. Failures are recorded, never raised.

    A decoder that makes no progress for `timeout` seconds is abandoned and its video recorded as failed.
    `per_block` fixes the videos per Ray block (default: videos_per_block). URL inputs are fetched
    by each node itself with `storage` (fsspec's options): they need no shared file system.
    """
    ray = require_ray()
    started = time.perf_counter()
    # relative paths mean another file, or none, on a worker whose working directory differs
    jobs = [job if is_url(job.path) else VideoJob(job.key, os.path.abspath(job.path), job.members, job.skip)
            for job in jobs]
    with QuietRay() as quiet:
        ours = not ray.is_initialized()
        if ours:  # no address: $RAY_ADDRESS, else a new local Ray (never whichever cluster ran last here)
            ray.init(address=address or os.environ.get("RAY_ADDRESS") or "local", include_dashboard=False,
                     log_to_driver=False, logging_level=logging.ERROR)
        quiet.move_to(_session_logs(ray))
        context = ray.data.DataContext.get_current()  # the process's: put back what we change
        saved = (context.enable_progress_bars, context.execution_options.preserve_order,
                 context.max_errored_blocks)
        context.enable_progress_bars = False
        context.execution_options.preserve_order = False
        context.max_errored_blocks = -1  # a block whose task fails costs its videos (recorded), not the run
        try:
            return _run(ray, jobs, network, store, short, on_video, timeout, per_block, started, quiet.path,
                        keep_partial, storage)
        finally:
            (context.enable_progress_bars, context.execution_options.preserve_order,
             context.max_errored_blocks) = saved
            if ours:
                ray.shutdown()


def _session_logs(ray) -> Optional[str]:
    """Ray's log folder on this node (None where Ray does not say, e.g. a ray:// client)."""
    try:
        node = ray._private.worker._global_node
        return os.path.join(node.get_session_dir_path(), "logs") if node is not None else None
    except Exception:  # a private attribute: absent in some Ray versions
        return None


def _run(ray, jobs, network, store, short, on_video, timeout, per_block, started, log, keep_partial,
         storage) -> Summary:
    cpus = int(ray.cluster_resources().get("CPU", 1))
    gpus = int(ray.cluster_resources().get("GPU", 0)) if network.runtime.device.type == "cuda" else 0
    decoders = max(1, cpus - (0 if gpus else 1))  # on CPU, one core is the network's
    per_block = per_block or videos_per_block(len(jobs), decoders)
    collector = Collector(store, None)
    pending = {job.key for job in jobs}  # not yet written or failed (a tar shard: not yet read to its end)
    shards = {job.prefix: job.key for job in jobs if job.is_shard}

    def wanted(key: str) -> bool:
        """Whether a row is news: its video is pending, or a member of a pending shard not yet resolved."""
        if key in pending:
            return True
        at = key.find("/")
        while at != -1 and shards:
            shard = shards.get(key[:at + 1])
            if shard is not None:
                return shard in pending and key not in store.done and key not in collector.failed
            at = key.find("/", at + 1)
        return False
    clips_seen: dict[str, set[tuple[int, int]]] = {}  # (attempt, start) of the clips taken, per video in flight

    def resolved(key: str, failure: Optional[Failed], summary: Summary) -> None:
        pending.discard(key)
        clips_seen.pop(key, None)
        if on_video:
            on_video(key, failure, summary)

    collector.on_video = resolved
    if jobs:
        net = ray.put(network.net.to("cpu").float())  # the actors prepare their own copy
        dataset = ray.data.from_items([{"key": job.key, "path": job.path,
                                        "members": json.dumps(job.members) if job.is_shard else "",
                                        "skip": json.dumps(sorted(job.skip))} for job in jobs],
                                      override_num_blocks=math.ceil(len(jobs) / per_block))
        dataset = dataset.map_batches(
            _Decode, batch_size=per_block, batch_format="numpy", num_cpus=1,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=decoders),
            fn_constructor_kwargs={"spec": network.spec, "short": short, "timeout": timeout,
                                   "keep_partial": keep_partial, "storage": storage})
        dataset = dataset.map_batches(
            _Forward, batch_size=network.batch_size, batch_format="numpy", num_gpus=1 if gpus else 0,
            compute=ray.data.ActorPoolStrategy(size=max(1, gpus)),
            fn_constructor_kwargs={"net": net, "layers": network.layers, "spec": network.spec,
                                   "runtime": network.runtime, "batch_size": network.batch_size})
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            for i, (key, kind, meta) in enumerate(zip(batch["key"], batch["kind"], batch["meta"])):
                key = str(key)
                if not wanted(key):  # a block Ray ran again after a lost node: already written or failed
                    continue
                if kind == "read":
                    collector.shard_read(ShardRead(key))
                    pending.discard(key)
                    continue
                info = json.loads(meta) if kind in ("last", "done", "fail") else {}
                if kind in ("clip", "last"):
                    start = int(batch["start"][i])
                    attempt = int(info.get("attempt", 0) if kind == "last" else (meta or 0))
                    seen = clips_seen.setdefault(key, set())
                    if (attempt, start) not in seen:
                        seen.add((attempt, start))
                        outputs = {layer: batch[f"out_{layer}"][i] for layer in network.layers}
                        collector.clip(key, outputs, start, attempt)
                if kind in ("last", "done") and wanted(key):
                    collector.finished(Finished(key, info["num_clips"], info["facts"], info.get("attempt", 0)))
                elif kind == "fail":
                    collector.fail(Failed(key, info["stage"], info["error"]))
    log_hint = f"this driver's: {log}" if log else "see the Ray session's logs folder"
    for job in jobs:  # in the order given, so the records do not depend on the set's order
        if job.key in pending:
            collector.fail(Failed(job.key, "decode", _LOST.format(log_hint)))
    collector.summary.seconds = time.perf_counter() - started
    return collector.summary
