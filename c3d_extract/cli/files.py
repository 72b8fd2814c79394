"""`c3d-extract`'s commands on feature files: merge, info, export, import-npy, import-blobs. Their
errors reach the user through the group (cli/errors.py): one line and an exit status."""

from __future__ import annotations

import json
import sys
from typing import Optional

import click

from c3d_extract.featurefile.interop import export_npy, import_blobs, import_npy
from c3d_extract.featurefile.merge import merge
from c3d_extract.featurefile.reader import FeatureFile, FeatureFileError
from c3d_extract.storage import is_storage_error


def _say(message: str) -> None:
    click.echo(f"c3d-extract: {message}", err=True)


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
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--layer", help="Layer to export (default: the model's default feature when the file has it: "
                               "fc6 for C3D, res5b for Res3D).")
def export_command(file: str, folder: str, layer: Optional[str]) -> None:
    """One FOLDER/<key>.npy per video: (clips, D) when FILE has per-clip rows, else (D,)."""
    count = export_npy(file, folder, layer)
    click.echo(f"{folder}: {count} .npy file(s)")


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
