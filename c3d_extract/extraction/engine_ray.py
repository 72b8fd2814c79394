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
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import numpy as np

from c3d_extract.errors import UsageError
from c3d_extract.extraction.decode import DecoderSettings, ShardRead
from c3d_extract.extraction.inputs import VideoJob
from c3d_extract.extraction.remote import is_url
from c3d_extract.extraction.pipeline import (BatchRunner, Clip, Collector, Failed, Finished, OnVideo, Summary,
                                             descriptor)
from c3d_extract.extraction.ray_logs import QuietRay
from c3d_extract.featurefile.writer import FeatureStore, video_record
from c3d_extract.models.preprocess import InputSpec
from c3d_extract.options import RAY_CONNECT_TIMEOUT, ExtractOptions

FORWARD_CALL_BYTES = 256 << 20  # the clips of one forward actor call, at most (several network batches)
FORWARD_CALL_BATCHES = 8  # network batches per forward actor call, at most
VIDEOS_PER_CALL_STEP = 256  # a run has this many videos per network batch a forward call holds, at least
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
    """Output rows of one decode call, turned into a numpy batch on `take`. `nonce` names the call:
    a block Ray runs again (a lost node) decodes its videos again under another nonce, and the driver
    never mixes the partial sums of two runs of one video."""

    def __init__(self, blank: np.ndarray, nonce: str):
        self.blank, self.nonce = blank, nonce
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
                 "frames": np.stack(self.frames), "nonce": np.array([self.nonce] * len(self.key), dtype=object)}
        self.__init__(self.blank, self.nonce)
        return batch


def _done_meta(item: Finished) -> str:
    return json.dumps({"num_clips": item.num_clips, "facts": item.facts, "attempt": item.attempt})


class _Decode:
    """Ray map_batches actor: a block of video rows -> their clip rows, each video ending in a last,
    done or fail row. Decoding runs in a DecodePool of one decoder process per call (the actor only
    relays), so a decoder that hangs for `timeout` seconds or crashes costs its own video."""

    def __init__(self, input_spec, options: ExtractOptions, rows_per_batch: int = 16):
        self.decoder = DecoderSettings.of(options, input_spec)  # always resized where decoded
        self.short, self.timeout = options.short, options.timeout
        self.rows_per_batch = rows_per_batch
        self.blank = np.zeros((input_spec.frames, *input_spec.crop, 3), np.uint8)
        self.node = node_name()

    def __call__(self, batch: dict) -> Iterator[dict]:
        from c3d_extract.extraction.workers import DecodePool

        rows = _Rows(self.blank, uuid.uuid4().hex)
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
        pool = DecodePool(self._warm_first(jobs, warm), self.decoder, self.short, 1, self.timeout)
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
    """Ray map_batches actor: the prepared network, built once per actor. It returns one row per video
    of a call (partial_sums): the video's finished journal record when all its clips are in the call,
    else the float64 sum of its clips there, so the driver receives a row per video rather than per
    clip; with `per_clip` (the file keeps every clip) the rows stay one per clip."""

    def __init__(self, net, layers, input_spec, runtime, batch_size: int, per_clip: bool = False):
        ray = require_ray()
        if isinstance(net, ray.ObjectRef):  # the weights travel once through the object store
            net = ray.get(net)
        self.network = BatchRunner(net, layers, input_spec, runtime, batch_size)
        self.per_clip = per_clip

    def __call__(self, batch: dict) -> dict:
        clips = np.flatnonzero(np.isin(batch["kind"], ("clip", "last")))
        values = self.network(batch["frames"][clips]) if len(clips) else {}
        if self.per_clip:
            out = {"key": batch["key"], "kind": batch["kind"], "meta": batch["meta"], "start": batch["start"],
                   "nonce": batch["nonce"]}
            for layer in self.network.layers:
                column = np.zeros((len(batch["key"]), 1), np.float32)
                if len(clips):
                    column = np.zeros((len(batch["key"]), values[layer].shape[1]), np.float32)
                    column[clips] = values[layer]
                out[f"out_{layer}"] = column
            return out
        return partial_sums(batch, clips, values, self.network.layers)


def partial_sums(batch: dict, clips: np.ndarray, values: dict, layers: Sequence[str]) -> dict:
    """A decoded batch and its clips' activations -> one row per (video, nonce, attempt), the other
    rows (done, fail, read) as they were. A video whose clips are all in the batch is a `video` row:
    its descriptors (pipeline.descriptor) computed here, on the actor, not on the one driver, and
    made into the journal record the store appends as it is (writer.video_record), in `record`, its
    clip count in `clips`. Otherwise a `part` row: the sum of its clips in the batch (sequential in
    clip order, in float64, as the local engine sums), as the bytes of a float64 array in
    `sum_<layer>`, and their starts, which the driver adds up. Most rows are `video` rows, so the
    driver neither parses nor encodes anything for most videos."""
    groups: dict[tuple[str, str, int], list[int]] = {}
    finish: dict[tuple[str, str, int], dict] = {}
    for j, i in enumerate(clips):
        kind, meta = batch["kind"][i], batch["meta"][i]
        info = json.loads(meta) if kind == "last" else {"attempt": int(meta or 0)}
        group = (str(batch["key"][i]), str(batch["nonce"][i]), int(info.get("attempt", 0)))
        groups.setdefault(group, []).append(j)
        if kind == "last":
            finish[group] = info
    others = [i for i in range(len(batch["key"])) if batch["kind"][i] not in ("clip", "last")]
    count = len(groups) + len(others)
    out = {"key": [], "kind": [], "meta": [], "start": np.zeros(count, np.int64), "nonce": [],
           "clips": np.zeros(count, np.int64), "record": np.full(count, b"", dtype=object)}
    sums = {layer: np.full(count, b"", dtype=object) for layer in layers}
    for row, ((key, nonce, attempt), members) in enumerate(groups.items()):
        totals = {layer: np.cumsum(values[layer][members], axis=0, dtype=np.float64)[-1] for layer in layers}
        starts = [int(batch["start"][clips[j]]) for j in members]
        done = finish.get((key, nonce, attempt))
        meta = ""
        if done is not None and done["num_clips"] == len(starts) == len(set(starts)):
            features = {layer: descriptor(total) for layer, total in totals.items()}
            out["record"][row] = video_record(key, features, {**done["facts"], "num_clips": len(members)}, layers)
            out["clips"][row], kind = len(members), "video"
        else:
            info = {"attempt": attempt, "starts": starts}
            if done is not None:
                info.update(num_clips=done["num_clips"], facts=done["facts"])
            meta, kind = json.dumps(info), "part"
            for layer, total in totals.items():
                sums[layer][row] = total.tobytes()
        out["key"].append(key), out["kind"].append(kind), out["meta"].append(meta), out["nonce"].append(nonce)
    for i in others:
        out["key"].append(batch["key"][i]), out["kind"].append(batch["kind"][i])
        out["meta"].append(batch["meta"][i]), out["nonce"].append(batch["nonce"][i])
    for name in ("key", "kind", "meta", "nonce"):
        out[name] = np.array(out[name], dtype=object)
    out.update({f"sum_{layer}": column for layer, column in sums.items()})
    return out


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


def extract_ray(jobs: Sequence[VideoJob], network: BatchRunner, store: FeatureStore,
                options: ExtractOptions = ExtractOptions(), on_video: Optional[OnVideo] = None,
                per_block: Optional[int] = None) -> Summary:
    """Extract `jobs` with Ray Data into `store`: the cluster at `options.ray_address` (e.g. "auto",
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
            return _run(ray, jobs, network, store, options, on_video, per_block, started, quiet.path)
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


COMMIT_SECONDS = 0.1  # group commit: the journal is fsynced at most about this often (and at the end)


@dataclass
class _Partial:
    """The clips of one video from one decode run (nonce) summed so far."""

    attempt: int = 0
    sums: Optional[dict] = None
    starts: set = field(default_factory=set)
    expected: Optional[int] = None
    facts: Optional[dict] = None


class Driver:
    """The driver's side of the engine: result batches in, rows of the store out. A video is written
    once the part rows of one decode run of it hold all its clips (starts unique: a block Ray runs
    again under another nonce never adds to the first run's sums); per-clip rows when the file keeps
    every clip. The store's records are committed in groups (COMMIT_SECONDS)."""

    def __init__(self, jobs: Sequence[VideoJob], collector: Collector, layers: Sequence[str]):
        self.collector, self.layers = collector, list(layers)
        self.store = collector.store
        self.pending = {job.key for job in jobs}  # not yet written or failed (a tar shard: not yet read to its end)
        self.shards = {job.prefix: job.key for job in jobs if job.is_shard}
        self.parts: dict[str, dict[str, _Partial]] = {}     # video -> nonce -> its sums so far
        self.clips_seen: dict[str, set[tuple[int, int]]] = {}  # per-clip rows: (attempt, start) taken
        self.committed = time.monotonic()

    def wanted(self, key: str) -> bool:
        """Whether a row is news: its video (or the tar shard it is a member of) is pending and the
        video is neither written nor failed."""
        if key in self.store.done or key in self.collector.failed:
            return False
        if key in self.pending:
            return True
        at = key.find("/")
        while at != -1 and self.shards:
            shard = self.shards.get(key[:at + 1])
            if shard is not None:
                return shard in self.pending
            at = key.find("/", at + 1)
        return False

    def resolved(self, key: str) -> None:
        self.pending.discard(key)
        self.parts.pop(key, None)
        self.clips_seen.pop(key, None)

    def absorb(self, batch: dict) -> None:
        """One result batch of the forward actors; the group is committed when COMMIT_SECONDS passed."""
        outputs = [batch[f"out_{layer}"] for layer in self.layers] if "out_" + self.layers[0] in batch else []
        records, clips = batch.get("record"), batch.get("clips")
        for i, (key, kind, meta) in enumerate(zip(batch["key"], batch["kind"], batch["meta"])):
            key = str(key)
            if not self.wanted(key):  # a block Ray ran again after a lost node: already written or failed
                continue
            if kind == "video":  # the most common row by far: appended as it came
                self.store.add_record(key, records[i])
                self.collector.written(key, int(clips[i]))
                self.resolved(key)
                continue
            if kind == "part":
                sums = [np.frombuffer(batch[f"sum_{layer}"][i], np.float64) for layer in self.layers]
                self._part(key, str(batch["nonce"][i]), json.loads(meta), sums)
            elif kind == "read":
                self.collector.shard_read(ShardRead(key))
                self.pending.discard(key)
            elif kind == "fail":
                info = json.loads(meta)
                self.collector.fail(Failed(key, info["stage"], info["error"]))
                self.resolved(key)
            else:
                self._clip_row(key, kind, meta, int(batch["start"][i]), [column[i] for column in outputs])
            if key in self.store.done:
                self.resolved(key)
        if time.monotonic() - self.committed >= COMMIT_SECONDS:
            self.commit(wait=False)

    def commit(self, wait: bool = True) -> None:
        """The group absorbed since the last commit made durable: with `wait` before returning (all
        of it), else its fsync runs in the background while the driver reads on."""
        self.collector.commit(wait)
        self.committed = time.monotonic()

    def _part(self, key: str, nonce: str, info: dict, sums: list) -> None:
        part = self.parts.setdefault(key, {}).setdefault(nonce, _Partial())
        attempt = int(info.get("attempt", 0))
        if attempt > part.attempt:  # a second decoder started the video over: the first's clips go
            part.__init__(attempt)
        elif attempt < part.attempt:
            return
        starts = info["starts"]
        if part.starts.intersection(starts):
            return  # the same clips twice in one run: cannot happen; never counted twice
        part.starts.update(starts)
        if part.sums is None:
            part.sums = {layer: np.array(value, np.float64) for layer, value in zip(self.layers, sums)}
        else:
            for layer, value in zip(self.layers, sums):
                part.sums[layer] += value
        if "num_clips" in info:
            part.expected, part.facts = info["num_clips"], info["facts"]
        if part.expected is not None and len(part.starts) == part.expected:
            self.collector.whole(key, part.sums, part.expected, part.facts)

    def _clip_row(self, key: str, kind: str, meta: str, start: int, values: list) -> None:
        """A per-clip row (clip, last or done): the Collector's running sums, duplicates dropped."""
        info = json.loads(meta) if kind in ("last", "done") else {}
        if kind in ("clip", "last"):
            attempt = int(info.get("attempt", 0) if kind == "last" else (meta or 0))
            seen = self.clips_seen.setdefault(key, set())
            if (attempt, start) not in seen:
                seen.add((attempt, start))
                self.collector.clip(key, dict(zip(self.layers, values)), start, attempt)
        if kind in ("last", "done") and self.wanted(key):
            self.collector.finished(Finished(key, info["num_clips"], info["facts"], info.get("attempt", 0)))


def _run(ray, jobs, network, store, options, on_video, per_block, started, log) -> Summary:
    cpus = int(ray.cluster_resources().get("CPU", 1))
    gpus = int(ray.cluster_resources().get("GPU", 0)) if network.runtime.device.type == "cuda" else 0
    decoders = max(1, cpus - (0 if gpus else 1))  # on CPU, one core is the network's
    per_block = per_block or videos_per_block(len(jobs), decoders)
    collector = Collector(store, on_video, grouped=True)
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
    collector.summary.seconds = time.perf_counter() - started
    return collector.summary
