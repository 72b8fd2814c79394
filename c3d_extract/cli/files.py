"""`c3d-extract`'s commands on feature files: merge, info, export, import-npy, import-blobs. Their
errors reach the user through the group (cli/errors.py): one line and an exit status."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import fields
from typing import Optional

import click

from c3d_extract.cli.errors import say
from c3d_extract.errors import UsageError
from c3d_extract.featurefile.activitynet import ExportOptions, export_activitynet
from c3d_extract.featurefile.interop import export_npy, import_blobs, import_npy
from c3d_extract.featurefile.merge import merge
from c3d_extract.featurefile.reader import FeatureFile, FeatureFileError
from c3d_extract.storage import is_storage_error


# what the flags of `export` other than --format and --layer mean when unset (ExportOptions' defaults)
ACTIVITYNET_DEFAULTS = {f.name: f.default for f in fields(ExportOptions) if f.name != "layer"}


def _say(message: str) -> None:
    say("c3d-extract", message)


@click.command("merge")
@click.argument("output", type=click.Path(dir_okay=False))
@click.argument("parts", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
def merge_command(output: str, parts: tuple[str, ...], overwrite: bool) -> None:
    """Combine the feature files PARTS (e.g. the shards of one job) into OUTPUT, sorted by key.

    Parts with other models, weights, layers or settings are refused. Videos found in several parts
    are reported (kept once), and so are shards of I/N that no part covers (exit status 1).
    """
    report = merge(output, list(parts), overwrite=overwrite)
    click.echo(f"{output}: {report.videos} video(s) and {report.failures} failure(s) from {len(parts)} part(s)")
    if report.duplicates:
        _say(f"{len(report.duplicates)} video(s) were in several parts with identical features (kept once): "
             f"{', '.join(report.duplicates[:5])}{' ...' if len(report.duplicates) > 5 else ''}")
    if report.conflicts:
        _say(f"{len(report.conflicts)} video(s) were in several parts with different features (the first "
             f"part's kept): {', '.join(report.conflicts[:5])}{' ...' if len(report.conflicts) > 5 else ''}")
    if report.missing_shards:
        _say(f"missing shard(s) {', '.join(map(str, report.missing_shards))}: the merged file is incomplete")
    sys.exit(1 if report.missing_shards or report.conflicts else 0)


@click.command("info")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def info_command(file: str, as_json: bool) -> None:
    """A short report on a feature file: model, weights, settings, counts, layers, failures."""
    try:
        report = FeatureFile(file).info()
    except OSError as exc:  # a damaged HDF5 file can fail while its datasets are read
        if is_storage_error(exc):
            raise
        raise FeatureFileError(f"{file}: cannot read it as a feature file ({exc})") from None
    if as_json:
        click.echo(json.dumps(report, indent=1, default=str))
        return
    settings = report["settings"]
    click.echo(f"{file}\n  model    {report['model']} ({report['spec']}), {report['precision']} on {report['device']}")
    click.echo(f"  weights  {report['weights']} (sha256 {report['weights_sha256']})")
    click.echo(f"  clips    {settings.get('clip_len')} frames every {settings.get('stride')}, step "
               f"{settings.get('frame_step')}, short videos: {settings.get('short_videos')}")
    click.echo(f"  mean     {settings.get('mean')}")
    click.echo(f"  videos   {report['videos']} ({report['clips']} clips, {report['frames']} frames, "
               f"{report['padded_short_videos']} padded short)")
    click.echo(f"  status   {report['status']}")
    if report["decoders"]:
        click.echo(f"  decoders {report['decoders']}")
    for name, layer in report["layers"].items():
        click.echo(f"  layer    {name}: {layer['dim']} values per video (clip shape {layer['clip_shape']})")
    if report["per_clip"] or report["segments"]:
        click.echo(f"  extra    per-clip rows: {'yes' if report['per_clip'] else 'no'}; segments: "
                   f"{report['segments'] or 'no'}")
    failures = report["failures"]
    click.echo(f"  failures {failures['count']}" + (f" ({failures['by_stage']})" if failures["count"] else ""))
    for row in failures["first"]:
        click.echo(f"           {row['video']}: {row['stage']}: {row['error']}")
    if report["unfinished_run"]:
        click.echo("  note     a journal from an unfinished run is waiting: re-run its command to fold it in")
    click.echo(f"  written  by c3d_extract {report['version']} with {report['decoder']}, {report['created']}")


@click.command("export")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.argument("out", metavar="OUT", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["npy", "activitynet"]), default="npy", show_default=True,
              help="npy: one OUT/<key>.npy per video (OUT a folder). activitynet: one HDF5 file OUT with a "
                   "group per video holding c3d_features (clips, D), as ActivityNet's C3D release.")
@click.option("--layer", help="Layer to export (npy default: the model's default feature when the file has it: "
                               "fc6 for C3D, res5b for Res3D; activitynet default: fc7, the release's).")
@click.option("--ids", type=click.Choice(["stem", "key"]), default="stem", show_default=True,
              help="activitynet: group names, the file name without folders and extension (v_X.mp4 -> v_X) "
                   "or the whole key without extension.")
@click.option("--id-prefix", default="", help="activitynet: put before every group name (e.g. v_ when the "
                                               "files are named by their YouTube id alone).")
@click.option("--pca", type=click.IntRange(1), help="activitynet: fit a PCA with N components (the release: "
                                                    "500) on every clip row, write it (--pca-file) and project.")
@click.option("--pca-from", type=click.Path(exists=True, dir_okay=False),
              help="activitynet: project with this PCA file: one written by --pca, or the official "
                   "PCA_activitynet_v1-3.hdf5 (500 components unless --pca N).")
@click.option("--pca-file", type=click.Path(dir_okay=False),
              help="activitynet: where --pca writes its fit (default: OUT's name with .pca.hdf5).")
@click.option("--any-protocol", is_flag=True, help="activitynet: export a file made with other clips than "
                                                   "16 frames every 8 (refused otherwise).")
@click.option("--overwrite", is_flag=True, help="activitynet: replace OUT if it exists.")
def export_command(file: str, out: str, fmt: str, layer: Optional[str], **flags) -> None:
    """FILE's features out: one OUT/<key>.npy per video ((clips, D) when FILE has per-clip rows, else
    (D,)), or with --format activitynet one HDF5 file OUT, f[video]["c3d_features"] (clips, D)."""
    if fmt == "npy":
        used = [f"--{name.replace('_', '-')}" for name, unset in ACTIVITYNET_DEFAULTS.items()
                if flags[name] != unset]
        if used:
            raise UsageError(f"{', '.join(used)}: only with --format activitynet")
        if os.path.isfile(out):
            raise UsageError(f"{out}: is a file; --format npy writes a folder of .npy files")
        count = export_npy(file, out, layer)
        click.echo(f"{out}: {count} .npy file(s)")
        return
    options = ExportOptions(layer=layer or ExportOptions.layer, **flags)
    report = export_activitynet(file, out, options, warn=_say)
    if report.pca_written:
        click.echo(f"{report.pca_written}: PCA with {report.dim} components fitted on {report.clips} clip rows")
    click.echo(f"{out}: {report.videos} video(s), {report.clips} clip(s) of {report.dim} values")


@click.command("import-npy")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("--layer", required=True, help="Name of the layer the arrays hold (e.g. fc6).")
@click.option("--model", default="unknown", show_default=True, help="What computed them (recorded).")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
def import_npy_command(folder: str, output: str, layer: str, model: str, overwrite: bool) -> None:
    """Every FOLDER/**/*.npy into a feature file: (T, D) arrays as per-clip rows, (D,) as descriptors."""
    count = import_npy(folder, output, layer, model, overwrite)
    click.echo(f"{output}: {count} video(s) imported")


@click.command("import-blobs")
@click.argument("prefix_list", type=click.Path(exists=True, dir_okay=False))
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("--blob", "blobs", multiple=True, default=("fc6-1",), show_default=True,
              help="Blob name(s) to read (<prefix>.<blob>); fc6-1 is stored as layer fc6.")
@click.option("--clip-len", type=click.IntRange(1), default=16, show_default=True)
@click.option("--model", default="c3d", show_default=True, help="What computed them (recorded).")
@click.option("--root", type=click.Path(file_okay=False), help="Keys are the prefix folders relative to this.")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
def import_blobs_command(prefix_list: str, output: str, blobs: tuple[str, ...], clip_len: int, model: str,
                         root: Optional[str], overwrite: bool) -> None:
    """The original C3D tool's output (one <prefix>.fc6-1 file per clip, prefixes listed one per line
    in PREFIX_LIST, e.g. output/c3d/v_X/000016) into a feature file, one row per prefix folder."""
    count = import_blobs(prefix_list, output, list(blobs), clip_len, model, root, overwrite)
    click.echo(f"{output}: {count} video(s) imported")
