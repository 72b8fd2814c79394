"""Throughput of c3d_extract on this machine, side by side with a naive peer-style baseline.

    python bench/throughput.py VIDEO_DIR [--out bench/results.md] [--models c3d,res3d]

Measured in one run on the same videos (random weights):
- decode only: frames/s of the reader + resize/crop + clip cutting (one process);
- network only: clips/s of the prepared network per precision and batch size (random clips);
- end to end: `extract()` (decoder processes, batches across videos, running means, no store);
- naive baseline, written the way peer tools do it: per clip a seek-and-decode of its 16 frames
  (`get_batch(range(s, s + 16))`), one clip per forward pass, fp32, no channels_last.
Prints markdown tables and appends them, with the machine's description, to --out.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

import decord
import torch
import torch.nn.functional as F

from c3d_extract.extraction.clips import window_starts
from c3d_extract.extraction.inputs import VideoJob, find_videos
from c3d_extract.models.registry import get_spec
from c3d_extract.extraction.assemble import Clip
from c3d_extract.extraction.pipeline import BatchRunner, extract
from c3d_extract.options import ExtractOptions
from c3d_extract.extraction.runtime import Runtime, cpu_has_fast_bf16
from c3d_extract.weights.load import load_weights

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.support.decoding import decode_video  # noqa: E402  (in this process, unlike the tool)


def machine() -> str:
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            name = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    amx = torch.cpu._is_amx_tile_supported() if hasattr(torch.cpu, "_is_amx_tile_supported") else False
    return (f"{name}, {os.cpu_count()} CPUs, bf16 kernels {'yes' if cpu_has_fast_bf16() else 'no'}, "
            f"AMX {'yes' if amx else 'no'}, torch {torch.__version__}, "
            f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}")


def report(text: str, out: str) -> None:
    """Print a results section and append it to the results file."""
    print(text)
    with open(out, "a") as handle:
        handle.write(text)


def _network(model: str, precision: str, batch: int) -> BatchRunner:
    spec = get_spec(model)
    net = load_weights("random", model).net
    return BatchRunner(net, list(spec.default_layers), spec.input, Runtime(torch.device("cpu"), precision), batch)


def network_only(model: str, precision: str, batch: int = 4, reps: int = 3) -> float:
    network = _network(model, precision, batch)
    spec = network.input_spec
    clips = torch.randint(0, 256, (batch, spec.frames, *spec.crop, 3), dtype=torch.uint8).numpy()
    for _ in range(2):
        network(clips)
    started = time.perf_counter()
    for _ in range(reps):
        network(clips)
    return batch * reps / (time.perf_counter() - started)


def decode_only(model: str, jobs: list[VideoJob]) -> tuple[float, int]:
    """Video frames/s through reader, resize/crop and clip cutting, and the number of clips."""
    spec = get_spec(model).input
    started, clips, frames = time.perf_counter(), 0, 0
    for job in jobs:
        for item in decode_video(job, spec, "loop"):
            if isinstance(item, Clip):
                clips += 1
            elif hasattr(item, "facts"):
                frames += item.facts["num_frames"]
    return frames / (time.perf_counter() - started), clips


class _Discard:
    wants_clips = False

    def add_video(self, *args, **kwargs) -> None:
        pass

    def add_failure(self, *args, **kwargs) -> None:
        pass


def end_to_end(model: str, precision: str, jobs: list[VideoJob], workers: int, batch: int = 4) -> tuple[float, int]:
    summary = extract(jobs, _network(model, precision, batch), _Discard(),  # type: ignore[arg-type]
                      ExtractOptions(workers=workers))
    return summary.clips / summary.seconds, summary.clips


def naive(model: str, jobs: list[VideoJob]) -> tuple[float, int]:
    """The peer-tool way: seek and decode each clip, one clip per forward, fp32, default layout."""
    spec = get_spec(model)
    net = load_weights("random", model).net.eval()
    layer = spec.default_layers[0]
    s = spec.input
    started, count = time.perf_counter(), 0
    for job in jobs:
        reader = decord.VideoReader(job.path, num_threads=1)
        total = None
        for start in window_starts(len(reader), s.clip_len, s.stride):
            frames = reader.get_batch(list(range(start, start + s.clip_len, s.frame_step))).asnumpy()
            x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
            x = F.interpolate(x, size=s.resize, mode="bilinear", align_corners=False).round()
            top, left = s.crop_offset
            x = x[:, :, top: top + s.crop[0], left: left + s.crop[1]].flip(1) - torch.tensor(s.mean).view(1, 3, 1, 1)
            with torch.no_grad():
                out = net(x.permute(1, 0, 2, 3)[None], [layer])[layer][0].flatten().double()
            total = out if total is None else total + out
            count += 1
        if total is not None:
            (total / total.norm()).numpy()
    return count / (time.perf_counter() - started), count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video_dir")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results.md"))
    parser.add_argument("--models", default="c3d,res3d")
    parser.add_argument("--workers", default="1,2")
    args = parser.parse_args()
    jobs, _ = find_videos([args.video_dir])
    precisions = ["fp32"] + (["bf16"] if cpu_has_fast_bf16() else [])
    workers = [int(w) for w in args.workers.split(",")]
    lines = [f"### {datetime.date.today()} — throughput — {machine()}", "",
             f"Videos: {', '.join(job.key for job in jobs)}; random weights; clips/s unless said.", ""]
    for model in args.models.split(","):
        fps, clips = decode_only(model, jobs)
        base, _ = naive(model, jobs)
        lines += [f"**{model}** ({clips} clips): decode + resize + clips alone {fps:.0f} video frames/s (1 process); "
                  f"naive baseline {base:.2f} clips/s.", "",
                  "| precision | network B=1 | B=4 | B=8 | " + " | ".join(f"end to end, {w} worker(s)" for w in workers)
                  + " | end to end / naive |", "|---|---|---|---|" + "---|" * len(workers) + "---|"]
        for precision in precisions:
            net = {b: network_only(model, precision, b) for b in (1, 4, 8)}
            e2e = [end_to_end(model, precision, jobs, w)[0] for w in workers]
            lines.append(f"| {precision} | {net[1]:.1f} | {net[4]:.1f} | {net[8]:.1f} | " +
                         " | ".join(f"{r:.1f} ({100 * r / net[4]:.0f}% of B=4)" for r in e2e) +
                         f" | {max(e2e) / base:.1f}x |")
            print(lines[-1], flush=True)
        lines.append("")
    report("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
