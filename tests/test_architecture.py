"""The layout's promises: light entry points and torch-free decoder processes, the one exception family
and its exit statuses, the typed run settings, and the library deciding what the CLI used to."""

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from c3d_extract import api
from c3d_extract.cli.errors import EXTRACT_STATUSES, TOOL_STATUSES, exit_status
from c3d_extract.errors import C3DError, Failure, Refused, UsageError
from c3d_extract.extraction.reader_base import VideoError
from c3d_extract.featurefile.journal import JournalBusy
from c3d_extract.featurefile.reader import FeatureFileError
from c3d_extract.featurefile.writer import StoreError
from c3d_extract.settings import RunSettings
from c3d_extract.storage import StorageError
from c3d_extract.weights.convert import WeightsError
from bench.support.videos import moving_frames, write_video


# What a decoder process runs (decode.py) and reads with: the messages it sends, the readers and the
# damage checks, FFmpeg's log, the ring. No torch in any (it would cost each process seconds at start).
DECODER_PROCESS_MODULES = ("decode", "messages", "video", "pyav_reader", "decord_reader", "reader_base", "damage",
                           "ffmpeg_log", "ring")


def _imports_torch(*modules: str) -> bool:
    """Whether importing `modules` in a fresh interpreter imports torch."""
    code = f"import sys, {', '.join(modules)}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return out.strip() == "True"


def test_entry_points_and_what_a_decoder_process_imports_leave_torch_out():
    # a decoder process re-runs its parent's script (the console script enters through c3d_extract.cli)
    # and unpickles its target from extraction.decode, an InputSpec from models.preprocess; each module
    # of what it runs is checked alone too (DECODER_PROCESS_MODULES)
    assert not _imports_torch("c3d_extract.cli", "c3d_extract.extraction.decode", "c3d_extract.models.preprocess")
    for module in DECODER_PROCESS_MODULES:
        assert not _imports_torch(f"c3d_extract.extraction.{module}"), module
    # nor what a run goes through before its decoders have their first jobs (extraction/early.py)
    assert not _imports_torch("c3d_extract.cli.extract", "c3d_extract.extraction.early", "c3d_extract.models.inputs")
    assert _imports_torch("c3d_extract.extraction.pipeline")  # the check can see torch where it is


def test_every_error_of_the_package_is_one_family_with_the_documented_statuses():
    usage = [WeightsError("w"), FeatureFileError("f"), UsageError("u")]
    refused = [StoreError("s"), JournalBusy("j")]
    failed = [VideoError("decode", "v"), Failure("d")]
    disk = StorageError("out.h5", OSError(28, "No space left on device"), "nothing was written")
    for exc in [*usage, *refused, *failed, disk]:
        assert isinstance(exc, C3DError)
    assert all(isinstance(e, ValueError) for e in usage)  # library callers catching ValueError still do
    assert all(isinstance(e, Refused) for e in refused) and all(isinstance(e, Failure) for e in failed)
    # c3d-extract (README "Exit status"): 2 could not start or refused, 1 failed, 3 the disk
    assert [exit_status(e, EXTRACT_STATUSES) for e in [*usage, *refused, *failed, disk]] == [2, 2, 2, 2, 2, 1, 1, 3]
    # c3d-weights and c3d-svm: 1 for any error, 3 for the disk
    assert [exit_status(e, TOOL_STATUSES) for e in [*usage, *refused, *failed, disk]] == [1] * 7 + [3]


def test_run_settings_are_validated_once_and_recorded_as_before():
    base = dict(model="c3d", spec_name="c3d-sports1m", weights_sha256="x", layers=("fc6",))
    for bad in ({"short_videos": "lop"}, {"precision": "fp64"}, {"resize_on": "gpu"}, {"shard": (3, 2)},
                {"segments": -1}, {"layers": ()}):
        with pytest.raises(UsageError):
            RunSettings(**{**base, **bad})
    settings = RunSettings(**base, clips={"clip_len": 16}, shard=(1, 4), per_clip=True)
    assert settings.to_dict() == {"model": "c3d", "spec": "c3d-sports1m", "weights_sha256": "x", "layers": ["fc6"],
                                  "clip_len": 16, "short_videos": "loop", "precision": "fp32",
                                  "resize_on": "workers", "shard": "1/4", "per_clip": True}
    with pytest.raises(AttributeError):
        settings.precision = "bf16"  # frozen


def test_a_misspelt_short_rule_is_a_usage_error_before_any_video(tmp_path):
    # it used to travel unchecked and turn every short video into "unexpected ValueError"
    with pytest.raises(UsageError, match="lop"):
        api.build_extractor(model="res3d", weights="random", short="lop", device="cpu")


def test_an_unknown_engine_is_refused_before_the_output_exists(tmp_path):
    out = tmp_path / "out.h5"
    with pytest.raises(UsageError, match="engine"):
        api.extract([str(tmp_path)], str(out), engine="foo", weights="random")
    assert not out.exists()


def test_under_ray_the_file_records_the_resize_place_ray_uses():
    local = api.build_extractor(model="res3d", weights="random", device="cpu", resize_on="device")
    ray = api.build_extractor(model="res3d", weights="random", device="cpu", resize_on="device", engine="ray")
    assert local.settings.resize_on == "device" and local.plan.resize_on == "device"
    assert ray.settings.resize_on == "workers" and ray.plan.resize_on == "workers"


def test_a_refused_run_ends_at_once_with_one_line_although_its_decoders_were_started(tmp_path):
    # the decoder processes are started before the network is built and ignore SIGTERM; a run that
    # stops there (an unknown layer) must still end, not wait for them (they would wait for ever: the
    # subprocess timeout is the hang guard; no clock that a loaded machine can beat)
    video = write_video(tmp_path / "v.mp4", moving_frames(20, 64, 96))
    run = subprocess.run([sys.executable, "-m", "c3d_extract", str(video), str(tmp_path / "out.h5"), "--weights",
                          "random", "--layers", "fc9"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 2 and "unknown layer(s) fc9" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "out.h5").exists()


def test_a_file_written_by_a_run_keeps_the_settings_layout(tmp_path):
    video = write_video(tmp_path / "v.mp4", moving_frames(20, 64, 96))
    api.extract([str(video)], str(tmp_path / "out.h5"), model="res3d", weights="random", layers=["pool5"],
                precision="fp32", shard="0/1", device="cpu")
    with h5py.File(tmp_path / "out.h5", "r") as h5:
        recorded = json.loads(h5.attrs["settings"])
    # the keys files of earlier versions hold, so a later run can add to them
    assert sorted(recorded) == sorted(["model", "spec", "weights_sha256", "layers", "clip_len", "stride", "frame_step",
                                       "resize", "crop", "crop_offset", "channels", "value_scale", "mean", "std",
                                       "short_videos", "precision", "resize_on", "shard"])
    assert recorded["shard"] == "0/1" and recorded["layers"] == ["pool5"] and recorded["resize_on"] == "workers"


@pytest.mark.slow
def test_each_console_entry_ends_promptly_with_its_status(tmp_path):
    # c3d-svm with worker processes (--jobs 2, a C search): scikit-learn's workers are ended by the
    # normal exit's hooks; c3d-extract's and c3d-weights' fast exit still gives their status
    from tests.test_svm_cli import ucf_like, write_features

    keys, _, x = ucf_like(n_classes=3, groups=25, clips=1, dim=16)
    path = write_features(tmp_path / "f.h5", keys, {"fc6": x})
    entry = "import sys; from c3d_extract.cli import {0}; sys.argv = ['{1}', *sys.argv[1:]]; {0}()"
    for main, name, args, status in (
            ("svm_main", "c3d-svm", [str(path), "--split", "1", "--jobs", "2", "--cv-C", "0.1,1"], 0),
            ("svm_main", "c3d-svm", [str(path), "--layer", "fc7"], 1),
            ("weights_main", "c3d-weights", ["convert", str(path), str(tmp_path / "w.pt")], 1),
            ("extract_main", "c3d-extract", ["info", str(tmp_path / "none.h5")], 2)):
        run = subprocess.run([sys.executable, "-c", entry.format(main, name), *args], capture_output=True,
                             text=True, timeout=600)  # a hang guard: a teardown that waits for ever fails
        assert run.returncode == status, (name, args, run.stderr[-2000:])
        assert "Traceback" not in run.stderr


# What each command-line module may import of the package: the API (and the modules CONTRIBUTING.md's Layout
# names as public: options, settings, errors, storage, the other commands' own library modules).
CLI_MAY_IMPORT = {
    "extract": {"c3d_extract", "c3d_extract.api", "c3d_extract.cli", "c3d_extract.cli.errors", "c3d_extract.errors",
                "c3d_extract.options", "c3d_extract.settings", "c3d_extract.storage",
                # what it reads and starts before `import torch` (its --help, the jobs, the early decoders):
                # modules without torch, so that a run's first seconds are spent decoding (issue #32)
                "c3d_extract.extraction.early", "c3d_extract.extraction.devices", "c3d_extract.extraction.inputs",
                "c3d_extract.models.defaults", "c3d_extract.models.inputs", "c3d_extract.weights.manifest"},
    "files": {"c3d_extract.cli.errors", "c3d_extract.errors", "c3d_extract.storage",
              "c3d_extract.featurefile.activitynet", "c3d_extract.featurefile.interop",
              "c3d_extract.featurefile.merge", "c3d_extract.featurefile.reader"},
    "svm": {"c3d_extract", "c3d_extract.cli.errors", "c3d_extract.errors", "c3d_extract.evaluation"},
    "weights": {"c3d_extract", "c3d_extract.cli.errors", "c3d_extract.errors", "c3d_extract.weights.convert",
                "c3d_extract.weights.load", "c3d_extract.weights.manifest"},
    "errors": {"c3d_extract.errors", "c3d_extract.storage"},
    "__init__": {"c3d_extract.cli.svm"},  # the console scripts import their command when run
}


def test_the_command_line_reaches_the_library_through_the_api():
    folder = Path(__file__).resolve().parent.parent / "c3d_extract" / "cli"
    assert sorted(CLI_MAY_IMPORT) == sorted(path.stem for path in folder.glob("*.py"))
    for name, allowed in CLI_MAY_IMPORT.items():
        tree = ast.parse((folder / f"{name}.py").read_text())
        found = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        found |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        ours = {module for module in found if module.split(".")[0] == "c3d_extract"}
        assert ours <= allowed, f"cli/{name}.py imports {sorted(ours - allowed)}: go through c3d_extract.api"


def test_bench_never_imports_tests():
    """What the benchmarks and the tests share (videos, in-process decoding, the real servers) lives in
    bench/support/, which the tests import; a benchmark never imports tests/ (nor in code it runs as text)."""
    bench = Path(__file__).resolve().parent.parent / "bench"
    importing = re.compile(r"^\s*(from\s+tests(\.|\s)|import\s+tests\b)", re.MULTILINE)
    scripts = sorted(bench.rglob("*.py"))
    assert len(scripts) > 10
    offenders = [str(path.relative_to(bench)) for path in scripts if importing.search(path.read_text())]
    assert offenders == [], f"bench/ imports tests/ in {offenders}: move what they share to bench/support/"


# Where no function takes more than MAX_PARAMETERS (self and cls not counted): what a call needs more
# of travels in one options object (options.ExtractOptions, extraction.plan.RunPlan,
# evaluation.options.SvmOptions, featurefile.activitynet.ExportOptions). Every module of the package but
# the command line's (cli/: click hands a command each flag as a parameter).
MAX_PARAMETERS = 8
MANY_PARAMETERS = ("cli",)


def _parameters(node: ast.AST) -> int:
    args = node.args
    names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
    bound = names[:1] in (["self"], ["cls"])
    return len(names) + bool(args.vararg) + bool(args.kwarg) - bound


def test_functions_take_at_most_eight_parameters():
    package = Path(__file__).resolve().parent.parent / "c3d_extract"
    found, seen = [], 0
    for path in sorted(package.rglob("*.py")):
        name = path.relative_to(package).as_posix()
        if name.split("/")[0] in MANY_PARAMETERS:
            continue
        seen += 1
        for node in ast.walk(ast.parse(path.read_text())):
            functions = (ast.FunctionDef, ast.AsyncFunctionDef)
            if isinstance(node, functions) and _parameters(node) > MAX_PARAMETERS:
                found.append(f"{name} {node.name}: {_parameters(node)}")
    assert seen > 50  # the walk found the package's modules
    assert found == [], f"more than {MAX_PARAMETERS} parameters: {found}"
    # the count itself, on functions whose parameters are known here
    counted = ast.parse("def f(a, b, *c, d, **e): pass\nclass K:\n    def m(self, x): pass").body
    assert _parameters(counted[0]) == 5 and _parameters(counted[1].body[0]) == 1


def test_what_old_callers_passed_is_refused_or_read_as_before():
    """Calls of the signatures before ExtractOptions: a positional flag after the jobs is refused at the
    call (it would have been taken for a callback), a bool resize place is refused (it would read as
    "device"), and an empty --shard is no shard, as it was."""
    from c3d_extract.extraction.decode import DecoderSettings
    from c3d_extract.models.c3d import C3D_SPORTS1M
    from c3d_extract.options import ExtractOptions

    with pytest.raises(TypeError):
        api.open_output("out.h5", None, [], True)  # was overwrite=True
    with pytest.raises(TypeError):
        api.run_jobs([], None, None, 4)  # was workers=4
    with pytest.raises(ValueError, match="resize_on"):
        DecoderSettings(C3D_SPORTS1M.input, True)
    assert ExtractOptions(shard="").shard is None and ExtractOptions(shard="1/4").shard == (1, 4)


# The seams of the modules split in issue #35: what each side may import of the other, and a size a
# reader can hold in mind. The actors (run on the cluster's nodes) know nothing of the driver or the
# engine that starts them; the journal's record format and its scan need nothing of the journal. Each
# reader knows nothing of the other, of the order they are tried in (video.py) or of the decoder process
# (decode.py); the damage checks and FFmpeg's log raise nothing of a reader's; the messages know nothing
# of who sends or reads them. The Collector (both engines' rows) knows nothing of the local engine's
# loop, nor the plan of the engines.
_READING = {"c3d_extract.extraction.video", "c3d_extract.extraction.decode", "c3d_extract.extraction.workers"}
_READERS = {"c3d_extract.extraction.pyav_reader", "c3d_extract.extraction.decord_reader"}
SPLIT_MODULES = {
    "extraction/video.py": {"c3d_extract.extraction.decode", "c3d_extract.extraction.workers"},
    "extraction/pyav_reader.py": _READING | {"c3d_extract.extraction.decord_reader"},
    "extraction/decord_reader.py": _READING | {"c3d_extract.extraction.pyav_reader"},
    "extraction/reader_base.py": _READING | _READERS,
    "extraction/damage.py": _READING | _READERS | {"c3d_extract.extraction.reader_base"},
    "extraction/ffmpeg_log.py": _READING | _READERS | {"c3d_extract.extraction.reader_base",
                                                       "c3d_extract.extraction.damage"},
    "extraction/decode.py": {"c3d_extract.extraction.workers"},
    "extraction/messages.py": _READING | _READERS | {"c3d_extract.extraction.ring"},
    "api.py": set(),
    "extraction/pipeline.py": set(),
    "extraction/collector.py": {"c3d_extract.extraction.pipeline", "c3d_extract.extraction.workers"},
    "extraction/plan.py": {"c3d_extract.extraction.pipeline", "c3d_extract.extraction.collector"},
    "extraction/engine_ray.py": set(),
    "extraction/ray_actors.py": {"c3d_extract.extraction.engine_ray", "c3d_extract.extraction.ray_driver"},
    "extraction/ray_driver.py": {"c3d_extract.extraction.engine_ray", "c3d_extract.extraction.ray_actors"},
    "featurefile/journal.py": set(),
    "featurefile/journal_format.py": {"c3d_extract.featurefile.journal", "c3d_extract.featurefile.journal_scan"},
    "featurefile/journal_scan.py": {"c3d_extract.featurefile.journal"},
}


def test_the_split_modules_keep_their_seams_and_a_readable_size():
    package = Path(__file__).resolve().parent.parent / "c3d_extract"
    for name, forbidden in SPLIT_MODULES.items():
        text = (package / name).read_text()
        assert len(text.splitlines()) <= 350, f"{name}: {len(text.splitlines())} lines"
        tree = ast.parse(text)
        found = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert not found & forbidden, f"{name} imports {sorted(found & forbidden)}"
