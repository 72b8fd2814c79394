"""The Ray engine's actors (`--engine ray`): what runs on the cluster's nodes, not in the driver.

`_Decode` (a CPU actor) decodes a block of videos in a DecodePool of one decoder process, so the
per-video `--timeout` and the replacement of a crashed or hanging decoder work exactly as they do
locally: a FIFO or an endless stream costs its own video, never the job. `_Forward` (the network,
one actor per GPU on CUDA, else one on the CPU) computes the clips' activations and returns one row
per video of a call (partial_sums): the video's whole journal record, or the sum of its clips there.

The decode actor's rows all have the same columns so the dataset has one schema: `kind` is clip,
last (a clip that also carries its video's facts, so a one-clip video is one row), done, fail or
read; `meta` carries a video's facts or its error as JSON (a clip's: its decoder attempt); `frames`
is a clip (zeros for the other rows); `nonce` names the decode call.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from typing import Iterator, Optional, Sequence

import numpy as np

from c3d_extract.extraction.decode import DecoderSettings
from c3d_extract.extraction.inputs import VideoJob
from c3d_extract.extraction.messages import ShardRead
from c3d_extract.extraction.assemble import Clip, Failed, Finished
from c3d_extract.extraction.collector import descriptor
from c3d_extract.extraction.pipeline import BatchRunner
from c3d_extract.extraction.remote import is_url
from c3d_extract.featurefile.writer import video_record
from c3d_extract.options import ExtractOptions

_WARM_UP = "\0warm-up"  # a key no video has: keys are paths


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
        import ray  # an actor runs in a Ray worker

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
    its descriptors (collector.descriptor) computed here, on the actor, not on the one driver, and
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
