"""`c3d-extract`: the command line over c3d_extract's library calls."""

from __future__ import annotations

import json
import signal
import sys
from typing import TYPE_CHECKING, Optional

import click
from tqdm import tqdm

from c3d_extract import __version__
from c3d_extract.cli import files
from c3d_extract.cli.errors import ToolGroup, say
from c3d_extract.errors import UsageError
import c3d_extract.extraction.early as early
from c3d_extract.extraction.devices import DEVICE_ENV, device_defaults
from c3d_extract.extraction.inputs import VIDEO_EXTENSIONS, find_jobs
from c3d_extract.models.defaults import DEFAULT_LAYERS
from c3d_extract.models.inputs import FAMILY_SPECS, INPUTS, MODEL_NAMES
from c3d_extract.options import DECODE_CHOICES, ENGINES, PRECISION_CHOICES, RESIZE_CHOICES, ExtractOptions
from c3d_extract.settings import SHORT_RULES
from c3d_extract.storage import free_bytes, human
from c3d_extract.weights.manifest import cache_dir

if TYPE_CHECKING:
    from c3d_extract import api

PROG = "c3d-extract"
DEFAULTS = ExtractOptions()  # the flags' defaults are the API's
CPU, CUDA = device_defaults("cpu"), device_defaults("cuda")


class Stopped(Exception):
    """SIGTERM or SIGINT: stop decoding, keep what is finished."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum


def _raise_stopped(signum: int, frame) -> None:
    raise Stopped(signum)


def _say(message: str) -> None:
    say(PROG, message)


def _per_model(value) -> str:
    """`value(spec name)` of each --model family's spec, as help text: "16 for c3d, res3d; 64 for ..."."""
    names: dict = {}
    for name, spec_name in FAMILY_SPECS.items():
        names.setdefault(value(spec_name), []).append(name)
    return "; ".join(f"{v} for {', '.join(n)}" for v, n in names.items())


class DefaultGroup(ToolGroup):
    """A group whose default command is `extract`: `c3d-extract videos/ out.h5` needs no verb."""

    default_command = "extract"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


class InputsArgument(click.Argument):
    """INPUTS... before OUTPUT: given one path, click fills OUTPUT with it and finds INPUTS empty;
    what the user left out is OUTPUT, and that is what the usage error names."""

    def handle_parse_result(self, ctx: click.Context, opts: dict, args: list[str]):
        given, inputs = opts.get("output"), opts.get(self.name)  # click marks an absent value UNSET
        if isinstance(given, str) and not (isinstance(inputs, (tuple, list)) and inputs):
            output = next(param for param in ctx.command.params if param.name == "output")
            raise click.MissingParameter(f"{given} is read as INPUTS; the feature file to write comes after "
                                         f"it (e.g. {PROG} {given} out.h5)", ctx=ctx, param=output)
        return super().handle_parse_result(ctx, opts, args)


@click.group(cls=DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name=PROG)
def main() -> None:
    """C3D and Res3D video descriptors, exactly as the papers computed them, into one HDF5 file.

    \b
    c3d-extract videos/ out.h5                          C3D fc6 of every video under videos/
    c3d-extract videos/ out.h5 --model res3d            Res3D res5b
    c3d-extract extract --help                          every option of the main job

    Without a command, `extract` is meant.
    """


@main.command("extract")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(), cls=InputsArgument)
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("--model", type=click.Choice(MODEL_NAMES),
              help="c3d: C3D Sports-1M (fc6 by default). res3d: Res3D Sports-1M (res5b by default). A spec "
                   "name picks other preprocessing. Default: what --weights is for, else c3d.")
@click.option("--layers", metavar="NAMES",
              help="Comma-separated layers to store, by their Caffe names (e.g. fc6,fc7,pool5,prob). "
                   f"Default: {_per_model(lambda name: ','.join(DEFAULT_LAYERS[name]))}.")
@click.option("--weights", metavar="NAME|PATH|random",
              help="A name from `c3d-weights list`, a checkpoint file (.caffemodel v1.0/v1.1, c3d.pickle, "
                   "torchvision r3d_18, or this package's layout; recognised from its content), or 'random' "
                   "(smoke runs only). Default: the model's published weights, fetched once into "
                   f"$C3D_EXTRACT_HOME/weights (now {cache_dir()}).")
@click.option("--seed", type=int, default=DEFAULTS.seed, show_default=True, help="Seed of --weights random, and of --verify's sample.")
@click.option("--mean", metavar="FILE|B,G,R",
              help="A mean cube (.binaryproto or .npy, 3x16x128x171) or per-channel values (in the model's "
                   "channel order) to subtract instead of the spec's. Default for C3D: the installed "
                   "Sports-1M cube, else a per-channel approximation.")
@click.option("--clip-len", type=click.IntRange(1),
              help=f"Frames in a clip window (default: {_per_model(lambda name: INPUTS[name].clip_len)}).")
@click.option("--stride", type=click.IntRange(1),
              help=f"Frames between window starts (default: {_per_model(lambda name: INPUTS[name].stride)}).")
@click.option("--frame-step", type=click.IntRange(1),
              help=f"Take every Nth frame of a window "
                   f"(default: {_per_model(lambda name: INPUTS[name].frame_step)}).")
@click.option("--short", type=click.Choice(SHORT_RULES), default=DEFAULTS.short, show_default=True,
              help="Videos shorter than one window: loop them, repeat the last frame (edge), or skip "
                   "them as failures.")
@click.option("--batch-size", type=click.IntRange(1),
              help=f"Clips per forward pass (default {CPU['batch_size']} on the CPU, "
                   f"{CUDA['batch_size']} on CUDA).")
@click.option("--workers", type=click.IntRange(1),
              help=f"Decoder processes. Default with the network on CUDA: the cores this process may use "
                   f"but one ({CUDA['workers']} here); on the CPU, where they share the cores with the network: "
                   f"half of them, at most 4 ({CPU['workers']} here). Local engine only: under Ray, one decoder "
                   f"per CPU of the cluster (but one, the network's, on a cluster without GPUs).")
@click.option("--timeout", type=click.FloatRange(min=1), default=DEFAULTS.timeout, show_default=True,
              help="Seconds a decoder may go without progress before its video is abandoned as failed "
                   "(both engines).")
@click.option("--resize-on", type=click.Choice(RESIZE_CHOICES), default=DEFAULTS.resize_on, show_default=True,
              help="Where frames are resized and cropped: in the decoder processes with OpenCV (what Caffe "
                   "did; auto), or on the network's device with OpenCV's fixed-point arithmetic in torch "
                   "(full frames travel; the same pixels, bit for bit; recorded in the file).")
@click.option("--decode-on", type=click.Choice(DECODE_CHOICES), default=DEFAULTS.decode_on, show_default=True,
              help="Where videos are decoded: cpu (the decoder processes), gpu (NVDEC threads too, taking the "
                   "videos it can decode from the same queue; the frames converted, resized and cropped on the "
                   "GPU, bit for bit the CPU path's pixels; what it cannot take goes to the CPU), auto (gpu where "
                   "the network is on CUDA and PyAV has NVDEC). Each video's reader is recorded in the file.")
@click.option("--keep-partial", is_flag=True,
              help="A video that breaks while decoding keeps the clips before the damage (status "
                   "partial:<frames>) instead of failing; for collections where damaged files are common.")
@click.option("--vp8-check/--no-vp8-check", default=DEFAULTS.vp8_check, show_default=True,
              help="Decode VP8 streams with slice threads, the one way FFmpeg reveals their damaged frames "
                   "(PyAV's read itself, no second decode; decord checks a VP8 file it reads first; see README).")
@click.option("--engine", type=click.Choice(ENGINES), default=DEFAULTS.engine, show_default=True,
              help="local: decoder processes on this machine. ray: Ray Data (decoding as CPU actors, the network "
                   "as GPU actors), local or on a cluster whose nodes see the videos at the same absolute "
                   "paths; needs the [ray] extra.")
@click.option("--ray-address", metavar="ADDR", help="Ray cluster to join (auto, HOST:6379 or ray://head:10001); "
                                                    "default: $RAY_ADDRESS, else a new local Ray.")
@click.option("--ray-connect-timeout", type=click.FloatRange(min=1), default=DEFAULTS.ray_connect_timeout,
              show_default=True,
              help="Seconds to join the Ray cluster before the run stops with one line naming the address and "
                   "Ray's reason (Ray itself retries an unreachable address for minutes).")
@click.option("--device", envvar=DEVICE_ENV, show_envvar=True,
              help="auto, cpu, cuda or cuda:N; a comma list (cuda:0,cuda:1) runs one replica per device. "
                   "Default: auto (the first CUDA device when there is one, else the CPU).")
@click.option("--precision", type=click.Choice(PRECISION_CHOICES), default=DEFAULTS.precision,
              show_default=True,
              help="auto: bf16 on CUDA devices with bf16 support and on CPUs with bf16 units (cosine >= 0.999 "
                   "to fp32, tested), else fp32. The file records what ran.")
@click.option("--root", type=click.Path(file_okay=False),
              help="Keys are paths relative to this directory (default: the input directory, or the "
                   "deepest directory holding all inputs).")
@click.option("--storage-options", "storage_text", metavar="JSON",
              help="fsspec options for s3://, gs:// and http(s):// inputs, e.g. '{\"endpoint_url\": "
                   "\"http://127.0.0.1:8333\"}' for an S3-compatible store (credentials are better left to "
                   "AWS_* variables and files or GOOGLE_APPLICATION_CREDENTIALS; never recorded).")
@click.option("--ext", metavar="EXTS", help=f"Extensions to look for in directories "
                                            f"(default: {','.join(VIDEO_EXTENSIONS)}).")
@click.option("--per-clip", is_flag=True, help="Also store every clip's activations with its first and last "
                                                "frame and time (clips/<layer>, indexed by clip_offset).")
@click.option("--segments", type=click.IntRange(1), metavar="K",
              help="Also store the clips pooled into K segments, each L2-normalised (UCF-Crime uses 32).")
@click.option("--shard", metavar="I/N", help="Process only shard I of N (0-based; a stable hash of each key), "
                                             "for N jobs writing N files; combine them with `merge`.")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists (otherwise runs add to it).")
@click.option("--retry-failed", is_flag=True, help="Process only the videos OUTPUT lists as failed.")
@click.option("--verify", type=click.IntRange(1), metavar="N",
              help="Re-extract N videos already in OUTPUT (a seeded sample) and compare with the stored rows; "
                   "OUTPUT is not changed. Exit 0 when they are reproduced.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary (errors still go to stderr).")
def extract_command(inputs: tuple[str, ...], output: str, storage_text: Optional[str], verify: Optional[int],
                    **flags) -> None:
    """Extract one descriptor per video from INPUTS (directories, searched recursively, files, URLs
    and prefixes: s3://, gs://, http(s)://, tar shards, or @LIST files of paths and URLs) into the
    HDF5 file OUTPUT.

    Every video is cut into windows (C3D and Res3D: 16 frames every 8 frames); each clip goes
    through the network; a video's descriptor is the mean of its clips' activations, L2-normalised,
    per layer. Re-running
    the same command skips the videos already in OUTPUT. Exit status: 0 when every video is in
    OUTPUT, 1 when any failed (see OUTPUT's `failures`), 2 when the run could not start, 3 when the
    disk is full or failing (finished videos are kept; the one-line message says where), 4 when an
    object store refused (credentials, bucket, endpoint).
    """
    options = ExtractOptions(storage_options=_storage_options(storage_text), **flags)
    quiet = options.quiet
    jobs = find_jobs(inputs, options, warn=_say)
    # into a new file, the decoders start on their first jobs before torch is imported (early.py)
    started = early.start(options, jobs) if not verify and early.all_to_do(output, options) else None
    from c3d_extract import api  # torch, the weights and the network: seconds the decoders decode

    extractor = api.build_extractor(options, warn=_say, prestart=True, early=started)
    runtime = extractor.network.runtime
    if verify:
        result = api.verify(output, jobs, extractor, verify)
        click.echo(f"{output}: re-extracted {result.recomputed} of {result.sampled} sampled video(s) "
                   f"({result.failed} failed now); largest difference {result.largest_difference:.3g}, lowest "
                   f"cosine {result.lowest_cosine:.6f}: {'reproduced' if result.reproduced else 'NOT reproduced'}")
        sys.exit(0 if result.reproduced else 1)
    # under Ray, Ray's own log lines go to a file from here on, before the progress bar takes stderr
    with api.run(jobs, output, extractor, warn=lambda message: _say(f"warning: {message}")) as run:
        store, todo = run.sink, run.todo
        keys = api.keys_of(jobs, store)
        skipped_done = len(keys & store.done)
        skipped_failed = 0 if options.retry_failed else len(keys & set(store.failed))
        if not quiet and (skipped_done or skipped_failed):
            _say(f"{output}: {skipped_done} video(s) already done, {skipped_failed} failed before "
                 f"(--retry-failed tries those again); {len(todo)} to do")
        _warn_if_disk_too_small(store, output, len(todo))
        paths = {job.key: api.redact(job.path) for job in todo}
        bar = tqdm(total=len(todo), unit="video", disable=True if quiet else None, file=sys.stderr,
                   dynamic_ncols=True)

        def on_video(key: str, failure: Optional[api.Failed], summary: api.Summary) -> None:
            if failure is not None:
                _say(f"{paths.get(key, key)}: {failure.stage}: {failure.error}")
            bar.update(1)
            elapsed = bar.format_dict.get("elapsed") or 0
            if elapsed:
                bar.set_postfix_str(f"{summary.clips / elapsed:.1f} clips/s", refresh=False)

        previous = {sig: signal.signal(sig, _raise_stopped) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            summary = run.go(on_video)
        except Stopped as stop:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            bar.close()
            _say(f"stopped by {stop}: saving the {len(keys & store.done)} finished video(s) into {output}; "
                 f"run the same command again to continue")
            store.close()  # the fold is atomic: a second signal here leaves the journal to the next run
            sys.exit(stop.exit_code)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            bar.close()
        keys = api.keys_of(jobs, store)  # a tar shard's members are known once it was read
        still_failed = keys & set(store.failed)
        if not quiet:
            rate = summary.clips / summary.seconds if summary.seconds else 0.0
            _say(f"{output}: wrote {summary.written} video(s) ({summary.clips} clips, {rate:.1f} clips/s, "
                 f"{runtime.device} {runtime.precision}), {summary.failed} failed; "
                 f"{len(keys & store.done)} of {len(keys)} input video(s) are in the file")
    sys.exit(1 if still_failed else 0)


def _storage_options(text: Optional[str]) -> Optional[dict]:
    """--storage-options' JSON object (its values are never echoed: they may hold keys)."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--storage-options is not valid JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(value, dict):
        raise UsageError("--storage-options must be a JSON object, e.g. '{\"endpoint_url\": \"http://host:8333\"}'")
    return value


def _warn_if_disk_too_small(store: api.FeatureStore, output: str, videos: int) -> None:
    """Say so before the run when the output's disk has less free space than the run will need."""
    needed, free = store.space_needed(videos), free_bytes(output)
    if videos and free is not None and free < needed:
        clips = " plus the per-clip rows" if store.per_clip else ""
        _say(f"warning: {output}: {videos} video(s) to do need about {human(needed)}{clips} on its disk "
             f"(the journal, then the new file beside the old one), and {human(free)} is free; a full disk "
             f"stops the run and keeps every finished video (free space and run the same command to continue)")


for _command in (files.merge_command, files.info_command, files.export_command, files.import_npy_command,
                 files.import_blobs_command):
    main.add_command(_command)
