"""The decode stage per decoder core, beside each reader alone and the FFmpeg CLI's own rgb24 rate.

    python bench/decode.py --videos DIR [--baseline OLD_CHECKOUT] [--reps 5] [--model c3d] [--out FILE]
    python bench/decode.py VIDEO [VIDEO ...]

Frames per CPU-second, one core (every measuring process is pinned to one CPU, and CPU time is what
is counted, so other work on the machine moves the figures less than it moves wall time), median of
--reps runs, each run reading every file enough times for about MIN_FRAMES frames:
- decode stage: what a decoder process does (decode.decode_frames: open, decode, rgb24, cv2 resize and
  crop of the --model's input spec, into a shared frame ring, ring.py), in a fresh process per run
  whose c3d_extract is this checkout's, and, with --baseline, also an older checkout's, the two runs
  alternating (side by side in one run of this script);
- each reader alone: pyav_reader.PyAVReader and decord_reader.DecordReader, their chunks as the tool reads them
  (open, decode, rgb24), nothing else;
- the FFmpeg CLI where an `ffmpeg` binary is on PATH: `ffmpeg -threads 1 -filter_threads 1 -i F -f
  rawvideo -pix_fmt rgb24 -y /dev/null`, with `-stream_loop` to read the file as many times in one
  process (its start-up is not counted, as the stage's is not) and `-fps_mode passthrough` (no frame
  dropped or repeated); its children's CPU time.
Prints `<file name>: decode stage <N> frames/s` and the other figures with ratios per file, then the
same for the set (read once: its frames over the sum of each file's time at its median rate); appends a markdown table naming the machine to
--out (bench/results.md unless --out is empty).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MIN_FRAMES = 600  # frames per measured run and file: reads of a short file are repeated
VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".ts", ".m2ts", ".flv", ".wmv",
                  ".m4v", ".ogv", ".3gp")


# --- what the test suite calls (tests/test_bench.py), and the old figures' functions -------------

def raw_decord(path: str, chunk: int = 64) -> int:
    """decord's own sequential read (`get_batch` + `asnumpy`), nothing else: frames read."""
    import decord

    reader = decord.VideoReader(path, num_threads=1)
    n = len(reader)
    for start in range(0, n, chunk):
        reader.get_batch(list(range(start, min(start + chunk, n)))).asnumpy()
    return n


def raw_pyav(path: str) -> int:
    """PyAV as the tool called it before issue #32: `to_ndarray("rgb24")` per frame: frames read."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        return sum(1 for frame in container.decode(stream) if frame.to_ndarray(format="rgb24") is not None)


def stage_in_process(path: str, model: str = "c3d") -> int:
    """decode_frames + ClipAssembler (what the decoder and the batching side do) on `path`: frames."""
    from c3d_extract.extraction.assemble import Clip, ClipAssembler
    from c3d_extract.extraction.decode import DecoderSettings, decode_frames
    from c3d_extract.extraction.inputs import VideoJob
    from c3d_extract.models.registry import get_spec

    spec = get_spec(model).input
    assembler, frames = ClipAssembler(spec, "loop"), 0
    for item in decode_frames(VideoJob("v", path), DecoderSettings(spec)):
        for out in assembler.push(item):
            if not isinstance(out, Clip):
                frames = out.facts["num_frames"]
    return frames


def stage_one_process(path: str, copies: int = 4, model: str = "c3d") -> float:
    """Frames/s (wall) one decoder process of workers.DecodePool sustains on `copies` reads of `path`,
    after a warm-up video (the process's start-up)."""
    from c3d_extract.extraction.assemble import Clip
    from c3d_extract.extraction.decode import DecoderSettings
    from c3d_extract.extraction.inputs import VideoJob
    from c3d_extract.extraction.workers import DecodePool
    from c3d_extract.models.registry import get_spec

    spec = get_spec(model).input
    pool = DecodePool([VideoJob(f"v{i}", path) for i in range(copies + 1)], DecoderSettings(spec), "loop", workers=1)
    frames, started = 0, None
    try:
        for item in pool:
            if not isinstance(item, Clip):
                if started is None:
                    started = time.perf_counter()
                else:
                    frames += item.facts["num_frames"]
        return frames / (time.perf_counter() - started)
    finally:
        pool.close()


# --- the measuring child: runs with the c3d_extract of one checkout first on its path ------------

class _Releaser:
    """The batching side of a ring, reduced to releasing every frame it is told about at once."""

    def __init__(self, ring):
        self.ring = ring

    def send(self, message) -> None:
        if message[0] == "ring":  # Message("ring", RingHeader); an older checkout: ("ring", *header)
            *_, sequence, count = message[1] if len(message) == 2 else message
            self.ring.release(sequence + count)


def _stage_frames(path: str, spec, writer) -> int:
    """One decoder's work on one video: decode_frames into the ring; frames decoded."""
    import inspect

    from c3d_extract.extraction.decode import decode_frames
    from c3d_extract.extraction.inputs import VideoJob
    try:
        from c3d_extract.extraction.messages import End, Frames
    except ImportError:  # an older checkout (--baseline): its messages live in decode.py
        from c3d_extract.extraction.decode import End, Frames
    if "decoder" in inspect.signature(decode_frames).parameters:  # else an older checkout: the spec alone
        from c3d_extract.extraction.decode import DecoderSettings

        spec = DecoderSettings(spec)

    frames = 0
    for item in decode_frames(VideoJob(path, path), spec):
        if isinstance(item, Frames):
            writer.write(item.key, item.attempt, item.frames)
        elif isinstance(item, End):
            frames = item.facts["num_frames"]
        else:
            raise RuntimeError(f"{path}: {item}")
    writer.flush()
    return frames


def _reader_frames(reader_class, path: str) -> int:
    reader = reader_class(path)
    try:
        return sum(len(chunk) for chunk in reader.chunks())
    finally:
        reader.close()


def child(modes: list[str], model: str, paths: list[str], copies: list[int]) -> dict:
    """{mode: {path: [frames, cpu seconds]}}: each path read `copies` times per mode, after one warm read."""
    import cv2

    from c3d_extract.extraction.ring import FrameRing, RingWriter
    from c3d_extract.models.registry import get_spec
    try:
        from c3d_extract.extraction.decord_reader import DecordReader
        from c3d_extract.extraction.pyav_reader import PyAVReader
    except ImportError:  # an older checkout (--baseline): both readers in video.py
        from c3d_extract.extraction.video import DecordReader, PyAVReader

    cv2.setNumThreads(1)  # as in a decoder process
    spec = get_spec(model).input
    ring = FrameRing.create((*spec.crop, 3), spec.clip_len)
    writer = RingWriter(ring, spec.clip_len, spec.stride, None)
    writer.connection = _Releaser(ring)
    runs = {"stage": lambda p: _stage_frames(p, spec, writer),
            "pyav": lambda p: _reader_frames(PyAVReader, p), "decord": lambda p: _reader_frames(DecordReader, p)}
    out: dict = {}
    for mode in modes:
        out[mode] = {}
        for path, times in zip(paths, copies):
            try:
                runs[mode](path)  # warm: the page cache, the libraries' first calls
                started, frames = time.process_time(), 0
                for _ in range(times):
                    frames += runs[mode](path)
                out[mode][path] = [frames, time.process_time() - started]
            except Exception as exc:  # a reader that cannot read this file: no figure
                out[mode][path] = [0, 0.0, f"{type(exc).__name__}: {exc}"[:200]]
    return out


def run_child(checkout: str, modes: list[str], model: str, paths: list[str], copies: list[int], cpu: int) -> dict:
    """`child` in a fresh process pinned to `cpu`, with `checkout`'s c3d_extract first on its path."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([checkout, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    script = (f"import json, os, sys; os.sched_setaffinity(0, {{{cpu}}}); sys.path.insert(0, {HERE!r}); "
              f"sys.path.insert(0, {checkout!r}); import decode as bench; "
              f"print('RESULT', json.dumps(bench.child(*json.loads(sys.argv[1]))))")
    result = subprocess.run([sys.executable, "-c", script, json.dumps([modes, model, paths, copies])],
                            capture_output=True, text=True, env=env, timeout=3600)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode or not lines:
        raise RuntimeError(f"measuring child ({checkout}) failed: {result.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def ffmpeg_rate(ffmpeg: str, path: str, frames: int, times: int, cpu: int) -> tuple[int, float]:
    """(frames, CPU seconds) of the FFmpeg CLI's rgb24 read of `path`, `times` times in one process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([ffmpeg, "-v", "error", "-nostdin", "-stream_loop", str(times - 1), "-threads", "1",
                    "-filter_threads", "1", "-i", path, "-fps_mode", "passthrough", "-f", "rawvideo",
                    "-pix_fmt", "rgb24", "-y", "/dev/null"], check=True, capture_output=True,
                   preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return frames * times, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def frame_count(path: str) -> int:
    """Frames PyAV decodes from `path` (what the readers and the CLI are held to)."""
    import av

    with av.open(path) as container:
        return sum(1 for _ in container.decode(video=0))


def median_rate(samples: list[tuple[int, float]]) -> float:
    rates = [frames / cpu for frames, cpu in samples if frames and cpu > 0]
    return statistics.median(rates) if rates else math.nan


def machine() -> str:
    """The CPU model (lscpu), its CPU count and the date."""
    name = ""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        pass
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    simd = "AVX-512" if "avx512f" in flags else ("AVX2" if "avx2" in flags else "no AVX2")
    return f"{name or 'unknown CPU'} ({simd}), {os.cpu_count()} CPUs, {datetime.date.today().isoformat()}"


def fmt(rate: float) -> str:
    return "-" if math.isnan(rate) else f"{rate:,.0f}"


def ratio(a: float, b: float) -> str:
    return "-" if math.isnan(a) or math.isnan(b) or not b else f"{a / b:.2f}x"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("videos", nargs="*", help="video files (or give --videos DIR)")
    parser.add_argument("--videos", dest="folder", help="a folder: every video file in it")
    parser.add_argument("--baseline", help="an older checkout whose decode stage is measured alongside")
    parser.add_argument("--model", default="c3d", help="whose input spec the stage resizes and crops to")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--skip", action="append", default=[], help="a file name to leave out (repeatable)")
    parser.add_argument("--out", default=os.path.join(HERE, "results.md"), help="'' to append nowhere")
    parser.add_argument("--label", default="", help="what the set is, for the results table")
    args = parser.parse_args(argv)
    paths = list(args.videos)
    if args.folder:
        paths += sorted(os.path.join(args.folder, n) for n in os.listdir(args.folder)
                        if n.lower().endswith(VIDEO_SUFFIXES) and n not in args.skip)
    if not paths:
        parser.error("no videos")
    cpu = min(os.sched_getaffinity(0))
    counts = [frame_count(p) for p in paths]
    copies = [max(1, math.ceil(MIN_FRAMES / max(n, 1))) for n in counts]
    ffmpeg = shutil.which("ffmpeg")
    samples: dict[str, dict[str, list]] = {k: {p: [] for p in paths} for k in ("old", "stage", "pyav", "decord", "ffmpeg")}
    for rep in range(args.reps):  # the variants alternate, so a slower minute of the machine hits them alike
        if args.baseline:
            for path, value in run_child(args.baseline, ["stage"], args.model, paths, copies, cpu)["stage"].items():
                samples["old"][path].append(value[:2])
        new = run_child(REPO, ["stage", "pyav", "decord"], args.model, paths, copies, cpu)
        for mode, values in new.items():
            for path, value in values.items():
                samples[mode][path].append(value[:2])
        if ffmpeg:
            for path, n, times in zip(paths, counts, copies):
                samples["ffmpeg"][path].append(ffmpeg_rate(ffmpeg, path, n, times, cpu))
        print(f"run {rep + 1}/{args.reps} done", file=sys.stderr)

    def rates(path: str) -> dict[str, float]:
        return {k: median_rate(samples[k][path]) for k in samples}

    def set_rate(kind: str) -> float:
        # the set read once: its frames over the sum of each file's time for its frames at its median rate
        seconds = 0.0
        for path, n in zip(paths, counts):
            rate = median_rate(samples[kind][path])
            if math.isnan(rate):
                return math.nan
            seconds += n / rate
        return sum(counts) / seconds

    rows, lines = [], []
    for path, n in zip(paths, counts):
        r = rates(path)
        name = os.path.basename(path)
        lines.append(f"{name}: decode stage {fmt(r['stage'])} frames/s; old stage {fmt(r['old'])} ({ratio(r['stage'], r['old'])}); "
                     f"PyAV reader {fmt(r['pyav'])}; decord reader {fmt(r['decord'])}; ffmpeg CLI {fmt(r['ffmpeg'])}; "
                     f"stage/ffmpeg {ratio(r['stage'], r['ffmpeg'])}")
        rows.append(f"| {name} ({n} frames) | {fmt(r['old'])} | {fmt(r['stage'])} | {ratio(r['stage'], r['old'])} "
                    f"| {fmt(r['pyav'])} | {fmt(r['decord'])} | {fmt(r['ffmpeg'])} | {ratio(r['stage'], r['ffmpeg'])} |")
    s = {k: set_rate(k) for k in samples}
    lines.append(f"set: decode stage {fmt(s['stage'])} frames/s; old stage {fmt(s['old'])} ({ratio(s['stage'], s['old'])}); "
                 f"PyAV reader {fmt(s['pyav'])}; decord reader {fmt(s['decord'])}; ffmpeg CLI {fmt(s['ffmpeg'])}; "
                 f"stage/ffmpeg {ratio(s['stage'], s['ffmpeg'])}")
    rows.append(f"| **the set** | {fmt(s['old'])} | {fmt(s['stage'])} | {ratio(s['stage'], s['old'])} | {fmt(s['pyav'])} "
                f"| {fmt(s['decord'])} | {fmt(s['ffmpeg'])} | {ratio(s['stage'], s['ffmpeg'])} |")
    print("\n".join(lines))
    if args.out:
        with open(args.out, "a") as handle:
            handle.write(f"\n### {datetime.date.today().isoformat()} — decode stage per core{' — ' + args.label if args.label else ''}"
                         f" — {machine()}\n\n"
                         f"`python bench/decode.py` ({args.model} spec, one core, frames per CPU-second, median of "
                         f"{args.reps} runs of >= {MIN_FRAMES} frames per file; old = {args.baseline or 'not measured'}).\n\n"
                         "| video | old stage | decode stage | new/old | PyAV reader | decord reader | ffmpeg CLI rgb24 | stage/ffmpeg |\n"
                         "|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
