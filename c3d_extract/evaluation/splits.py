"""Evaluation splits: UCF101 (official lists or group numbers), HMDB51 (153 split files) and any
folder-per-class collection (k-fold or leave-one-out). Facts: reference/protocols.md sections 2, 3, 5.

Videos are named by their file stem (`v_ApplyEyeMakeup_g08_c01`) for UCF101 and HMDB51, whose stems
are unique, so a feature file keyed `UCF-101/ApplyEyeMakeup/v_...avi` or `v_...avi` matches alike;
folder collections are named by their key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable, Optional, Sequence

import numpy as np

from c3d_extract.errors import UsageError

UCF_NAME = re.compile(r"v_(?P<cls>.+)_g(?P<group>\d+)_c(?P<clip>\d+)$")
HMDB_FILE = re.compile(r"(?P<cls>.+)_test_split(?P<split>\d+)\.txt$")


class SplitError(UsageError):
    """Split files or names that cannot give labels; says which file or video."""


@dataclass
class Split:
    name: str
    train: list[tuple[str, int]]  # (video id, class index)
    test: list[tuple[str, int]]


@dataclass
class Protocol:
    dataset: str
    classes: list[str]
    splits: list[Split]
    by: str = "stem"  # how a video id matches a feature-file key: its "stem" or the whole "key"
    notes: list[str] = field(default_factory=list)


def stem(key: str) -> str:
    """File name without folders and extension: the id of a UCF101 or HMDB51 video."""
    return PurePosixPath(key.replace("\\", "/")).stem


def _lines(path: Path) -> list[str]:
    """Non-empty lines without CR/LF or surrounding spaces (the official lists use CRLF)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return [line.strip() for line in handle if line.strip()]
    except OSError as exc:
        raise SplitError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _split_ids(split: str, available: Sequence[int]) -> list[int]:
    if split == "all":
        return list(available)
    try:
        number = int(split)
    except ValueError:
        raise SplitError(f"split must be a number or 'all', not {split!r}") from None
    if number not in available:
        raise SplitError(f"split {number} does not exist; there are {', '.join(map(str, available))}")
    return [number]


def ucf101_lists(folder: Path, split: str) -> Protocol:
    """UCF101 from classInd.txt, trainlistNN.txt (with labels) and testlistNN.txt (without)."""
    class_ind = folder / "classInd.txt"
    classes: list[str] = []
    for line in _lines(class_ind):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise SplitError(f"{class_ind}: expected '<index> <ClassName>', got {line!r}")
        if int(parts[0]) != len(classes) + 1:
            raise SplitError(f"{class_ind}: index {parts[0]} out of order (expected {len(classes) + 1})")
        classes.append(parts[1])
    index = {name.lower(): i for i, name in enumerate(classes)}  # HandstandPushups = HandStandPushups

    def label_of(path: str, source: Path) -> int:
        folder_name = PurePosixPath(path).parent.name
        if folder_name.lower() not in index:
            raise SplitError(f"{source}: class folder {folder_name!r} of {path} is not in {class_ind}")
        return index[folder_name.lower()]

    found = (re.fullmatch(r"trainlist(\d+)\.txt", p.name) for p in folder.iterdir())
    available = sorted(int(m[1]) for m in found if m)
    splits = []
    for number in _split_ids(split, available):
        train, test = [], []
        train_file, test_file = folder / f"trainlist{number:02d}.txt", folder / f"testlist{number:02d}.txt"
        for line in _lines(train_file):
            parts = line.split()
            label = int(parts[1]) - 1 if len(parts) > 1 else label_of(parts[0], train_file)
            train.append((stem(parts[0]), label))
        for line in _lines(test_file):
            test.append((stem(line.split()[0]), label_of(line.split()[0], test_file)))
        splits.append(Split(str(number), train, test))
    return Protocol("ucf101", classes, splits)


def ucf101_names(keys: Iterable[str], split: str) -> Protocol:
    """UCF101 without the lists: class from the folder (or the name), test groups 1-7, 8-14, 15-21
    for splits 1, 2, 3; class order case-insensitive alphabetical, as classInd.txt."""
    videos: list[tuple[str, str, int]] = []
    spelling: dict[str, str] = {}
    for key in keys:
        match = UCF_NAME.match(stem(key))
        if not match:
            raise SplitError(f"{key}: not a UCF101 name (v_<Class>_gNN_cNN); give --splits-dir or another --dataset")
        folder = PurePosixPath(key).parent.name
        # the folder spells HandstandPushups where the file says HandStandPushups: trust the folder
        name = folder if folder and folder.lower() == match["cls"].lower() else match["cls"]
        spelling.setdefault(name.lower(), name)
        videos.append((stem(key), name.lower(), int(match["group"])))
    classes = sorted(spelling.values(), key=str.lower)
    index = {name.lower(): i for i, name in enumerate(classes)}
    splits = []
    for number in _split_ids(split, [1, 2, 3]):
        test_groups = range(7 * (number - 1) + 1, 7 * number + 1)
        train = [(v, index[c]) for v, c, g in videos if g not in test_groups]
        test = [(v, index[c]) for v, c, g in videos if g in test_groups]
        splits.append(Split(str(number), train, test))
    return Protocol("ucf101", classes, splits, notes=["splits from group numbers (no official lists given)"])


def hmdb51(folder: Path, split: str) -> Protocol:
    """HMDB51 from its <class>_test_splitN.txt files: id 1 train, 2 test, 0 unused."""
    files: dict[int, dict[str, Path]] = {}
    for path in folder.iterdir():
        match = HMDB_FILE.match(path.name)
        if match:
            files.setdefault(int(match["split"]), {})[match["cls"]] = path
    if not files:
        raise SplitError(f"{folder}: no <class>_test_splitN.txt files (HMDB51's testTrainMulti_7030_splits)")
    classes = sorted({cls for per_split in files.values() for cls in per_split})
    splits = []
    for number in _split_ids(split, sorted(files)):
        missing = [c for c in classes if c not in files[number]]
        if missing:
            raise SplitError(f"{folder}: split {number} has no file for class(es) {', '.join(missing)}")
        train, test = [], []
        for label, cls in enumerate(classes):
            for line in _lines(files[number][cls]):
                parts = line.split()
                if len(parts) != 2 or parts[1] not in "012":
                    raise SplitError(f"{files[number][cls]}: expected '<video>.avi <0|1|2>', got {line!r}")
                (train if parts[1] == "1" else test if parts[1] == "2" else []).append((stem(parts[0]), label))
        splits.append(Split(str(number), train, test))
    return Protocol("hmdb51", classes, splits)


def folders(keys: Sequence[str], folds: str, seed: int = 0) -> Protocol:
    """Folder-per-class videos (class = first folder of the key), `folds` = K or 'loo'."""
    from sklearn.model_selection import LeaveOneOut, StratifiedKFold

    labels_text = []
    for key in keys:
        parts = PurePosixPath(key).parts
        if len(parts) < 2:
            raise SplitError(f"{key}: no class folder in the key (expected <class>/<video>)")
        labels_text.append(parts[0])
    classes = sorted(set(labels_text))
    y = np.array([classes.index(c) for c in labels_text])
    if folds == "loo":
        splitter, name = LeaveOneOut(), "loo"
    else:
        try:
            k = int(folds)
        except ValueError:
            raise SplitError(f"--folds must be a number or 'loo', not {folds!r}") from None
        smallest = np.bincount(y).min()
        if k < 2 or k > smallest:
            raise SplitError(f"--folds {k}: needs 2 <= K <= the smallest class size ({smallest})")
        splitter, name = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed), "fold"
    splits = [Split(f"{name} {i + 1}", [(keys[j], int(y[j])) for j in tr], [(keys[j], int(y[j])) for j in te])
              for i, (tr, te) in enumerate(splitter.split(np.zeros(len(y)), y))]
    return Protocol("folders", classes, splits, by="key")


def protocol(dataset: str, keys: Sequence[str], splits_dir: Optional[str], split: str,
             folds: Optional[str], seed: int = 0) -> Protocol:
    """Choose and build the protocol; `dataset` auto recognises UCF101 and HMDB51."""
    folder = Path(splits_dir) if splits_dir else None
    if folder is not None and not folder.is_dir():
        raise SplitError(f"{splits_dir}: no such directory")
    if dataset == "auto":
        if folds:
            dataset = "folders"
        elif folder is not None and (folder / "classInd.txt").is_file():
            dataset = "ucf101"
        elif folder is not None and any(HMDB_FILE.match(p.name) for p in folder.iterdir()):
            dataset = "hmdb51"
        elif keys and sum(bool(UCF_NAME.match(stem(k))) for k in keys) == len(keys):
            dataset = "ucf101"
        else:
            raise SplitError("cannot tell the dataset from the video names: give --dataset with --splits-dir, "
                             "or --folds K for a folder-per-class collection")
    if dataset == "ucf101":
        return ucf101_lists(folder, split) if folder is not None else ucf101_names(keys, split)
    if dataset == "hmdb51":
        if folder is None:
            raise SplitError("HMDB51 needs --splits-dir with its testTrainMulti_7030_splits files")
        return hmdb51(folder, split)
    if dataset == "folders":
        return folders(keys, folds or "5", seed)
    raise SplitError(f"unknown dataset {dataset!r}")


def match(protocol: Protocol, keys: Sequence[str]) -> tuple[dict[str, int], list[str]]:
    """Row of each video id in the feature file, and the ids no row has (to report, not drop)."""
    ids = [stem(k) for k in keys] if protocol.by == "stem" else list(keys)
    rows: dict[str, int] = {}
    for row, video in enumerate(ids):
        if video in rows:
            raise SplitError(f"two videos in the feature file are both named {video!r} "
                             f"({keys[rows[video]]} and {keys[row]})")
        rows[video] = row
    wanted = {v for s in protocol.splits for v, _ in s.train + s.test}
    return rows, sorted(v for v in wanted if v not in rows)


__all__ = ["Protocol", "Split", "SplitError", "protocol", "match", "stem"]
