"""Batches of clips on their way to the network, without a copy or an allocation per batch.

Each device has a small ring of staging slots, allocated once per run: a clip is written straight
into its row of the open slot (pinned host memory on CUDA), a full slot is uploaded on a copy
stream of its own while the previous batch computes, and its features come back through pinned
memory with non-blocking copies. Batches go round-robin over the devices (replicas), and their
results are handed on in the order the batches were started, so the running sums, and the
features, do not depend on the number of replicas; a clip's features do not depend on its batch
neighbours (every forward has one shape, padding rows are zeros). Memory is bounded by the ring.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from c3d_extract.extraction.attempts import Attempts

SLOTS_CUDA = 4  # one being filled, up to three uploading, computing or coming back
SLOTS_CPU = 3   # one being filled, one computing, one waiting

Row = tuple[str, int, int]  # (video key, first frame, decoder attempt) of one clip in a batch
OnResult = Callable[[dict[str, np.ndarray], list[Row]], None]


@dataclass(eq=False)
class Slot:
    """One batch's staging: uint8 clips (B, T, h, w, 3) on the host (pinned on CUDA), their device
    copy, and the features that come back (layer -> float32 (B, D), pinned, made on first use)."""

    host: torch.Tensor
    device: Optional[torch.Tensor]
    rows: list[Row] = field(default_factory=list)
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    done: Optional["torch.cuda.Event"] = None
    on_device: bool = False  # rows written on the device already (--resize-on device, NVDEC's clips)

    def __post_init__(self) -> None:
        self.array = self.host.numpy()  # the same memory, for numpy clips


class Staging:
    """One device's ring of slots, and the thread that starts its batches (PyTorch releases the GIL,
    so the network overlaps the reading of clips)."""

    def __init__(self, runner, slots: Optional[int] = None):
        self.runner = runner
        device = runner.runtime.device
        self.cuda = device.type == "cuda"
        shape = (runner.batch_size, runner.input_spec.frames, *runner.input_spec.crop, 3)
        count = slots or (SLOTS_CUDA if self.cuda else SLOTS_CPU)
        self.free: deque[Slot] = deque(
            Slot(torch.empty(shape, dtype=torch.uint8, pin_memory=self.cuda),
                 torch.empty(shape, dtype=torch.uint8, device=device) if self.cuda else None)
            for _ in range(count))
        self.copies = torch.cuda.Stream(device) if self.cuda else None
        self.thread = ThreadPoolExecutor(1, thread_name_prefix=f"network-{device}")

    def start(self, slot: Slot) -> Future:
        return self.thread.submit(self._run, slot)

    def _run(self, slot: Slot) -> Optional[dict[str, np.ndarray]]:
        count = len(slot.rows)
        if not self.cuda:  # the forward runs here and now
            return {layer: value[:count].flatten(1).numpy() for layer, value in
                    self.runner.forward(slot.host, count).items()}
        with torch.cuda.device(self.runner.runtime.device):
            compute = torch.cuda.current_stream()
            if not slot.on_device:  # the upload of this batch overlaps the forward of the one before
                with torch.cuda.stream(self.copies):
                    slot.device[:count].copy_(slot.host[:count], non_blocking=True)
                    uploaded = torch.cuda.Event()
                    uploaded.record()
                compute.wait_event(uploaded)
            for layer, value in self.runner.forward(slot.device, count).items():
                value = value[:count].flatten(1)
                if layer not in slot.outputs:
                    slot.outputs[layer] = torch.empty((len(slot.device), value.shape[1]), dtype=torch.float32,
                                                      pin_memory=True)
                slot.outputs[layer][:count].copy_(value, non_blocking=True)
            slot.done = torch.cuda.Event()
            slot.done.record()
        return None

    def close(self) -> None:
        self.thread.shutdown(wait=True, cancel_futures=True)


class Batches:
    """Clips into batches across videos and devices; `on_result(outputs, rows)` gets each batch's
    features (layer -> (n, D) float32, valid during the call) with the (key, start, attempt) of its
    rows, in the order the batches were started."""

    def __init__(self, runners: Sequence, on_result: OnResult, slots: Optional[int] = None):
        self.stages = [Staging(runner, slots) for runner in runners]
        self.on_result = on_result
        self.batch_size = runners[0].batch_size
        self._next = 0
        self._open: Optional[tuple[Staging, Slot]] = None
        self._in_flight: deque[tuple[Staging, Slot, Future]] = deque()

    def add(self, key: str, start: int, attempt: int, frames) -> None:
        """Copy one clip (uint8 (T, h, w, 3): numpy, or a torch tensor) into its row of the open batch."""
        stage, slot = self._open or self._open_slot()
        row = len(slot.rows)
        if isinstance(frames, np.ndarray):
            if slot.on_device:  # a batch begun with clips cut on the device (nvdec.py): this row joins them
                slot.device[row].copy_(torch.from_numpy(frames))
            else:
                slot.array[row] = frames
        elif frames.device.type == "cuda" and slot.device is not None:
            if not slot.on_device and row:  # host rows before it (the CPU decoders beside NVDEC's): up first
                slot.device[:row].copy_(slot.host[:row])
            slot.device[row].copy_(frames)  # cut on the device (--resize-on device, NVDEC): no round trip
            slot.on_device = True
        else:
            slot.host[row].copy_(frames)
        slot.rows.append((key, start, attempt))
        if len(slot.rows) == self.batch_size:
            self._start()

    def drop_stale(self, key: str, attempts: Attempts) -> None:
        """Take the clips of `key`'s stale attempts (`attempts`: the run's) out of the open batch: a
        second decoder started the video over, so they would be computed for nothing."""
        if self._open is None:
            return
        slot = self._open[1]
        keep = [i for i, (k, _, a) in enumerate(slot.rows) if k != key or attempts.current(k, a)]
        if len(keep) < len(slot.rows):
            for to, i in enumerate(keep):
                if to != i:
                    (slot.device if slot.on_device else slot.host)[to].copy_(
                        (slot.device if slot.on_device else slot.host)[i])
            slot.rows = [slot.rows[i] for i in keep]

    def take(self, wait: bool = False) -> None:
        """Hand on the finished batches (with `wait`, all of them) in the order they were started."""
        while self._in_flight and (wait or self._ready(*self._in_flight[0])):
            self._hand_on(*self._in_flight.popleft())

    def finish(self) -> None:
        """Start the last, partly filled batch and hand on every result."""
        if self._open is not None and self._open[1].rows:
            self._start()
        self.take(wait=True)

    def close(self) -> None:
        for stage in self.stages:
            stage.close()

    def _open_slot(self) -> tuple[Staging, Slot]:
        stage = self.stages[self._next]
        self._next = (self._next + 1) % len(self.stages)
        while not stage.free:  # every slot of this device in flight: the oldest batch comes back first
            self._hand_on(*self._in_flight.popleft())
        self._open = (stage, stage.free.popleft())
        return self._open

    def _start(self) -> None:
        stage, slot = self._open
        self._open = None
        self._in_flight.append((stage, slot, stage.start(slot)))

    @staticmethod
    def _ready(stage: Staging, slot: Slot, future: Future) -> bool:
        return future.done() and (slot.done is None or future.exception() is not None or slot.done.query())

    def _hand_on(self, stage: Staging, slot: Slot, future: Future) -> None:
        outputs = future.result()
        try:
            if outputs is None:  # CUDA: the features are in the slot's pinned memory once it is done
                slot.done.synchronize()
                outputs = {layer: value[:len(slot.rows)].numpy() for layer, value in slot.outputs.items()}
            self.on_result(outputs, slot.rows)
        finally:
            slot.rows, slot.done, slot.on_device = [], None, False
            stage.free.append(slot)
