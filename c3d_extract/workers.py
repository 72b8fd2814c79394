"""Decoding in worker processes: a hanging decoder is abandoned, a crashing one costs one video.

Each worker is a spawned process that decodes one video at a time and sends its clips through a pipe
of its own (memory stays flat: a send waits while the network is behind). A pipe per worker, not a
shared queue: a worker killed in the middle of a message would leave a shared queue with half a
message and its lock held, hanging everyone; a private pipe just reports EOF and is dropped. The
worker refreshes a heartbeat after every decoded chunk and marks the time it spends waiting on the
parent, so the parent can tell a decoder stuck inside FFmpeg (no heartbeat for `timeout` seconds:
killed, recorded, replaced) from one that waits for the network. A worker that dies is recorded and
replaced too.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import signal
import time
from multiprocessing.connection import wait
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

import torch

from c3d_extract.inputs import VideoJob
from c3d_extract.preprocess import InputSpec

_IDLE = "idle"


def _worker_main(tasks, results, heartbeat, spec: InputSpec, short: str, resize: bool) -> None:
    """Decode the jobs received on `tasks` until None arrives; `results` is this worker's own pipe."""
    from c3d_extract.pipeline import Clip, decode_video

    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the parent decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(1)

    def send(message) -> None:
        heartbeat.value = math.inf  # waiting on the parent, not hanging
        results.send(message)
        heartbeat.value = time.time()

    while True:
        try:
            job = tasks.recv()
        except EOFError:  # the parent is gone
            return
        if job is None:
            return
        heartbeat.value = time.time()
        for item in decode_video(job, spec, short, resize):
            heartbeat.value = time.time()
            if isinstance(item, Clip):  # numpy pickles without torch's shared-memory machinery
                item = Clip(item.key, item.start, item.frames.numpy())
            send(item)
        send(_IDLE)


@dataclass
class _Worker:
    process: mp.Process
    tasks: object      # our end of the pipe that sends jobs
    results: object    # our end of the worker's own result pipe
    heartbeat: object
    job: Optional[VideoJob] = None


class DecodePool:
    """Worker processes decoding `jobs`; iterate to get Clip/Finished/Failed items as they come."""

    def __init__(self, jobs: Iterable[VideoJob], spec: InputSpec, short: str, workers: int,
                 timeout: float = 300.0, resize: bool = True):
        self._ctx = mp.get_context("spawn")  # fork would copy torch's thread pools into the children
        self._jobs = iter(jobs)
        self._spec, self._short, self._timeout, self._resize = spec, short, timeout, resize
        self._workers = [self._start() for _ in range(max(1, workers))]

    def _start(self) -> _Worker:
        task_reader, task_writer = self._ctx.Pipe(duplex=False)
        result_reader, result_writer = self._ctx.Pipe(duplex=False)
        heartbeat = self._ctx.Value("d", time.time(), lock=False)
        process = self._ctx.Process(target=_worker_main, name="c3d-decode", daemon=True,
                                    args=(task_reader, result_writer, heartbeat, self._spec, self._short,
                                          self._resize))
        process.start()
        task_reader.close()   # the child's ends: EOF reaches each side when the other goes
        result_writer.close()
        return _Worker(process, task_writer, result_reader, heartbeat)

    def _assign(self, worker: _Worker) -> None:
        worker.job = next(self._jobs, None)
        if worker.job is not None:
            worker.heartbeat.value = time.time()
            worker.tasks.send(worker.job)

    def _replace(self, index: int) -> None:
        old = self._workers[index]
        if old.process.is_alive():
            old.process.kill()
        old.process.join(timeout=5)
        old.tasks.close()
        old.results.close()
        self._workers[index] = self._start()
        self._assign(self._workers[index])

    def _check(self) -> Iterator:
        """Failures for workers that died or stopped making progress (they are replaced)."""
        from c3d_extract.pipeline import Failed

        for index, worker in enumerate(self._workers):
            if worker.job is None:
                continue
            if not worker.process.is_alive() or worker.results.closed:
                worker.process.join(timeout=2)  # its pipe closed: let it finish dying to read its status
                code = worker.process.exitcode
                how = f"killed by {signal.Signals(-code).name}" if code and code < 0 else f"exit status {code}"
                yield Failed(worker.job.key, "decode", f"the decoder process died ({how})")
                self._replace(index)
            elif time.time() - worker.heartbeat.value > self._timeout:
                yield Failed(worker.job.key, "decode", f"no progress for {self._timeout:g} s: abandoned "
                                                       f"(a hanging decoder or an endless stream; see --timeout)")
                self._replace(index)

    def __iter__(self) -> Iterator:
        from c3d_extract.pipeline import Clip

        for worker in self._workers:
            self._assign(worker)
        last_check = time.time()
        while any(worker.job is not None for worker in self._workers):
            busy = {w.results: w for w in self._workers if w.job is not None and not w.results.closed}
            for reader in wait(list(busy), timeout=0.5):
                worker = busy[reader]
                try:
                    item = reader.recv()
                except (EOFError, OSError):  # the worker died, maybe in the middle of a message
                    reader.close()
                    continue
                if item == _IDLE:
                    self._assign(worker)
                elif worker.job is not None and item.key == worker.job.key:
                    yield Clip(item.key, item.start, torch.from_numpy(item.frames)) if isinstance(item, Clip) else item
            if time.time() - last_check > 0.5:
                last_check = time.time()
                yield from self._check()

    def close(self) -> None:
        """Stop every worker now (a decode in progress is abandoned, nothing is recorded for it)."""
        for worker in self._workers:
            if worker.process.is_alive():
                worker.process.kill()
        for worker in self._workers:
            worker.process.join(timeout=5)
            worker.tasks.close()
            worker.results.close()
