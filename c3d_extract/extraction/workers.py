"""Decoding in worker processes: a hanging decoder is abandoned, a crashing one costs one video.

Each worker is a spawned process that decodes one video at a time, already holding its next job,
and hands over its resized, cropped frames once each (although the windows overlap): into a shared
frame ring of its own (ring.py; a memfd this process creates, so nothing is left behind when a run
ends), announced by small headers on its pipe; frames not resized there (`--resize-on device`)
travel on the pipe itself (messages.FrameSender). The parent cuts the clips (assemble.ClipAssembler);
memory stays flat: a worker waits while its ring is full or its send while the network is behind.
A pipe per worker, not a shared queue: a worker killed in the middle of a message would leave a
shared queue with half a message and its lock held, hanging everyone; a private pipe just reports
EOF and is dropped. The worker refreshes a heartbeat after every decoded chunk and marks the time
it spends waiting on the parent, so the parent can tell a decoder stuck inside FFmpeg (no heartbeat
for `timeout` seconds: killed, recorded, replaced) from one that waits for the network. A worker that
dies is recorded and replaced too.
"""

from __future__ import annotations

import atexit
import fcntl
import multiprocessing as mp
import selectors
import queue
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np

from c3d_extract.extraction.assemble import ClipAssembler
from c3d_extract.extraction.decode import DecoderSettings, serve
from c3d_extract.extraction.messages import FRAMES, IDLE, RING, Failed, GiveBack, read_frames_into
from c3d_extract.extraction.inputs import VideoJob
from c3d_extract.extraction.ring import FrameRing

PIPE_BYTES = 1 << 20
STARTUP_GRACE = 120.0  # seconds a new decoder process may take to start before its first job's clock runs


@dataclass
class _Worker:
    process: mp.Process
    tasks: object      # our end of the pipe that sends jobs
    results: object    # our end of the worker's own result pipe
    heartbeat: object
    # jobs sent and not finished, the one being decoded first: the next one already waits in the
    # worker's pipe, so a worker never idles for a round trip between two short videos
    jobs: deque = field(default_factory=deque)
    ring: Optional[FrameRing] = None  # the shared memory its cropped frames come through (ring.py)
    announced: int = 0                # sequence number after the last frame it announced there
    members: set = field(default_factory=set)  # of a tar shard it reads: the member keys it started
    current: str = ""                           # the video of its current job it sent last

    def owns(self, key: str) -> bool:
        """Whether an item's video is the current job's (a tar shard's member counts), noting it."""
        job = self.job
        if job is None or not job.owns(key):
            return False
        if key != self.current:
            self.current = key
            if job.is_shard and key != job.key:
                self.members.add(key)
        return True

    @property
    def job(self) -> Optional[VideoJob]:
        return self.jobs[0] if self.jobs else None

    def stop(self) -> None:
        """Kill the process (a decode in progress is abandoned) and close both pipes and its ring."""
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self.tasks.close()
        self.results.close()
        if self.ring is not None:
            self.ring.close()


def _widen(connection) -> None:
    """Give a result pipe 1 MiB of buffer (Linux's default is 64 KiB): a chunk of frames (up to
    2.4 MB) then crosses in a few writes instead of dozens of wake-ups of both processes."""
    try:
        fcntl.fcntl(connection.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except (OSError, AttributeError):  # not Linux, or above /proc/sys/fs/pipe-max-size: keep the default
        pass


_CTX = mp.get_context("spawn")  # fork would copy torch's thread pools into the children
_SPARES: list[_Worker] = []  # decoder processes started ahead of a pool (prestart)


def _spawn() -> _Worker:
    """A new decoder process, waiting for its pool's settings."""
    task_reader, task_writer = _CTX.Pipe(duplex=False)
    result_reader, result_writer = _CTX.Pipe(duplex=False)
    _widen(result_reader)
    # a new process imports Python and the decoders before it reads its first job (seconds
    # on a busy node): that start is not the job's, so the clock starts STARTUP_GRACE later
    heartbeat = _CTX.Value("d", time.time() + STARTUP_GRACE, lock=False)
    process = _CTX.Process(target=serve, name="c3d-decode", daemon=True,
                           args=(task_reader, result_writer, heartbeat))
    process.start()
    task_reader.close()   # the child's ends: EOF reaches each side when the other goes
    result_writer.close()
    return _Worker(process, task_writer, result_reader, heartbeat)


def _stop_spares() -> None:
    """At exit, the spares no pool took are killed: they ignore SIGTERM (the parent decides when a
    decoder stops), which is all multiprocessing's own exit handler would send before it waits for
    them. Registered after that handler, so it runs first."""
    while _SPARES:
        _SPARES.pop().stop()


atexit.register(_stop_spares)


def prestart(count: int) -> None:
    """Start decoder processes now, for the next DecodePool to take: their start-up (Python and the
    decoders imported, a few tenths of a second) then overlaps with the caller's building of the
    network instead of following it. Unused spares wait (and end with this process)."""
    _SPARES[:] = [w for w in _SPARES if w.process.is_alive()]
    while len(_SPARES) < count:
        _SPARES.append(_spawn())


class SharedJobs:
    """One queue of jobs for the decoder processes (iterate) and the GPU's decoder threads (`take`,
    nvdec.DeviceDecoders), safe across threads. A job a thread does not want, or gives back, goes
    first to the processes."""

    def __init__(self, jobs: Iterable[VideoJob]):
        self._jobs, self._back, self._lock = iter(jobs), deque(), threading.Lock()

    def __iter__(self) -> "SharedJobs":
        return self

    def __next__(self) -> VideoJob:
        with self._lock:
            return self._back.popleft() if self._back else next(self._jobs)

    def take(self, wants: Callable[[VideoJob], bool]) -> Optional[VideoJob]:
        """The next job `wants` accepts (those it does not wait for the processes), or None at the end."""
        with self._lock:
            for job in self._jobs:
                if wants(job):
                    return job
                self._back.append(job)
            return None

    def give_back(self, job: VideoJob) -> None:
        with self._lock:
            self._back.append(job)


class DecodePool:
    """Worker processes decoding `jobs`; iterate to get Clip/Finished/Failed items as they come.
    A Clip's frames are valid until the next item is asked for: copy them (into a batch slot) first.
    `place` moves decoded frames to where clips are cut (ClipAssembler; `--resize-on device`).
    `gpu`: decoder threads (nvdec.DeviceDecoders) taking from the same SharedJobs `jobs`: their items
    (cropped frames on the device) are cut here too, and a video they give back goes to the processes."""

    def __init__(self, jobs: Iterable[VideoJob], decoder: DecoderSettings, short: str, workers: int,
                 timeout: float = 300.0, place: Optional[Callable[[np.ndarray], Any]] = None, gpu=None):
        self._jobs = jobs if isinstance(jobs, SharedJobs) else iter(jobs)
        self._gpu = gpu
        self._gpu_assembler = ClipAssembler(decoder.input_spec, short) if gpu is not None else None
        self._decoder, self._timeout = decoder, timeout
        self._assembler = ClipAssembler(decoder.input_spec, short, place)
        self._requeued: list[VideoJob] = []  # jobs sent to a worker that died before starting them
        self._workers = [self._start() for _ in range(max(1, workers))]
        self._selector = selectors.DefaultSelector()
        self._watched: dict[int, _Worker] = {}  # result pipes the selector watches
        self._started = self._closed = False

    def start(self) -> None:
        """Hand every worker its first jobs (once): decoding starts now, before the pool is iterated
        (a run starts it while its network is built: the rings fill, memory stays bounded)."""
        if not self._started:
            self._started = True
            for worker in self._workers:
                self._assign(worker)

    def _start(self) -> _Worker:
        """A spare from prestart that is still alive, else a new process; told this pool's settings
        and given a shared frame ring of its own where it crops (ring.py)."""
        input_spec = self._decoder.input_spec
        while True:
            worker = _SPARES.pop(0) if _SPARES else _spawn()
            if self._decoder.resize_on == "workers":
                worker.ring = FrameRing.create((*input_spec.crop, 3), input_spec.clip_len)
            decoder = replace(self._decoder, ring=worker.ring.path if worker.ring else None)
            try:
                worker.tasks.send(decoder)
                return worker
            except OSError:  # a spare that died while waiting: its end of the pipe is closed
                worker.stop()

    def _assign(self, worker: _Worker) -> None:
        """Keep two jobs in the worker's hands (or what is left)."""
        while len(worker.jobs) < 2:
            job = self._requeued.pop() if self._requeued else next(self._jobs, None)
            if job is None:
                return
            if not worker.jobs:
                worker.heartbeat.value = max(worker.heartbeat.value, time.time())  # keeps a new worker's grace
            worker.jobs.append(job)
            worker.tasks.send(job)

    def _lost(self, worker: _Worker) -> str:
        """The video a dead or stuck worker was on. A tar shard's other members are not lost: the
        shard goes back to the queue, passing over the members it had reached."""
        job = worker.job
        if job is None or not job.is_shard or not worker.members:  # no member reached: the shard fails
            return job.key if job else ""
        self._requeued.append(replace(job, skip=job.skip | frozenset(worker.members)))
        return worker.current if worker.current in worker.members else job.key

    def _replace(self, index: int) -> None:
        old = self._workers[index]
        old.stop()
        self._requeued.extend(reversed(list(old.jobs)[1:]))  # sent to it, never started
        self._workers[index] = self._start()
        self._assign(self._workers[index])

    def _check(self) -> Iterator:
        """Failures for workers that died or stopped making progress (they are replaced)."""
        for index, worker in enumerate(self._workers):
            if worker.job is None:
                continue
            if not worker.process.is_alive() or worker.results.closed:
                worker.process.join(timeout=2)  # its pipe closed: let it finish dying to read its status
                code = worker.process.exitcode
                how = f"killed by {signal.Signals(-code).name}" if code and code < 0 else f"exit status {code}"
                yield Failed(self._lost(worker), "decode", f"the decoder process died ({how})")
                self._replace(index)
            elif time.time() - worker.heartbeat.value > self._timeout:
                yield Failed(self._lost(worker), "decode", f"no progress for {self._timeout:g} s: abandoned "
                                                           f"(a hanging decoder, an endless stream or a stalled "
                                                           f"download; see --timeout)")
                self._replace(index)

    def __iter__(self) -> Iterator:
        """Clip, Finished and Failed items as the workers deliver them (assemble.ClipAssembler)."""
        self.start()
        last_check = time.time()
        gpu = self._gpu
        while any(worker.job is not None for worker in self._workers) or (gpu is not None and gpu.busy):
            for worker in self._ready(0.5 if self._gpu is None else 0.005):
                yield from self._read(worker)
            if self._gpu is not None:
                yield from self._gpu_items()
            if time.time() - last_check > 0.5:
                last_check = time.time()
                for failure in self._check():
                    yield from self._assembler.push(failure)

    def _gpu_items(self) -> Iterator:
        """What the GPU's decoder threads have put so far, cut into clips; a video given back (or passed
        over: a tar shard, a URL) is queued for the processes, and idle processes get it at once."""
        while True:
            try:
                item = self._gpu.items.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, GiveBack):
                self._gpu_assembler.drop(item.job.key)
                self._jobs.give_back(item.job)
            else:
                yield from self._gpu_assembler.push(item)
        for worker in self._workers:
            if not worker.jobs:
                self._assign(worker)

    def _ready(self, timeout: float) -> list[_Worker]:
        """The busy workers with something in their pipe, waiting up to `timeout` seconds. One selector
        for the pool's life (a new one per wait cost more than the work on a message)."""
        busy = {w.results.fileno(): w for w in self._workers if w.job is not None and not w.results.closed}
        for fd, worker in list(self._watched.items()):
            if busy.get(fd) is not worker:
                self._selector.unregister(fd)
                del self._watched[fd]
        for fd, worker in busy.items():
            if fd not in self._watched:
                self._selector.register(fd, selectors.EVENT_READ, worker)
                self._watched[fd] = worker
        return [key.data for key, _ in self._selector.select(timeout)]

    def _read(self, worker: _Worker, most: int = 8) -> Iterator:
        """The items of the messages waiting in `worker`'s pipe (up to `most`: the others get their
        turn; fewer waits, each of which costs more than a message): one dispatch on each Message's
        kind (messages.py)."""
        reader = worker.results
        for _ in range(most):
            try:
                kind, payload = reader.recv()
                if kind == RING:  # frames in the worker's shared ring: clips cut there
                    key, attempt, first, position, sequence, count = payload  # messages.RingHeader
                    worker.announced = sequence + count
                    keep = first + count
                    if worker.owns(key):
                        keep = yield from self._assembler.receive_ring(key, attempt, worker.ring.frames, first,
                                                                       position, count)
                    worker.ring.release(sequence + min(keep, first + count) - first)
                elif kind == FRAMES:  # the frames' bytes follow, read into place
                    if worker.owns(payload.key):
                        yield from self._assembler.receive(payload, lambda array: read_frames_into(reader, array))
                    else:
                        read_frames_into(reader, np.empty(payload.shape, np.uint8))
                elif kind == IDLE:
                    worker.jobs.popleft()
                    worker.members, worker.current = set(), ""
                    self._assign(worker)
                elif worker.owns(payload.key):  # ITEM: End, Failed or ShardRead
                    yield from self._assembler.push(payload)
                if kind != RING and worker.ring is not None:  # a video (attempt) ended: none of it is kept
                    worker.ring.release(worker.announced)
                if worker.job is None or not reader.poll():
                    return
            except (EOFError, OSError):  # the worker died, maybe in the middle of a message
                reader.close()
                return

    def close(self) -> None:
        """Stop every worker now (a decode in progress is abandoned, nothing is recorded for it); a
        second call does nothing."""
        if self._closed:
            return
        self._closed = True
        if self._gpu is not None:
            self._gpu.close()
        for worker in self._workers:
            worker.stop()
        self._selector.close()
