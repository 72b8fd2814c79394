"""Split files in their official formats, and the UCF101 group-number rule."""

import pytest

from c3d_extract.evaluation.splits import SplitError, match, protocol, ucf101_names

CLASSES = ["ApplyEyeMakeup", "Hammering", "HammerThrow", "HandstandPushups", "JumpingJack", "JumpRope"]


def write_ucf_lists(folder):
    folder.mkdir()
    # CRLF endings and 1-based indices, case-insensitive alphabetical order as the official file
    (folder / "classInd.txt").write_bytes("".join(f"{i + 1} {c}\r\n" for i, c in enumerate(CLASSES)).encode())
    train = ["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1", "HammerThrow/v_HammerThrow_g09_c02.avi 3",
             "HandstandPushups/v_HandStandPushups_g10_c01.avi 4"]
    test = ["Hammering/v_Hammering_g01_c01.avi", "HandstandPushups/v_HandStandPushups_g02_c03.avi",
            "JumpRope/v_JumpRope_g03_c01.avi"]
    (folder / "trainlist01.txt").write_bytes("\r\n".join(train).encode() + b"\r\n")
    (folder / "testlist01.txt").write_bytes("\r\n".join(test).encode())  # no final newline
    return folder


def test_ucf101_official_lists(tmp_path):
    proto = protocol("auto", [], str(write_ucf_lists(tmp_path / "ucfTrainTestlist")), "1", None)
    assert proto.dataset == "ucf101" and proto.classes == CLASSES
    split = proto.splits[0]
    assert split.train == [("v_ApplyEyeMakeup_g08_c01", 0), ("v_HammerThrow_g09_c02", 2),
                           ("v_HandStandPushups_g10_c01", 3)]
    # test lists carry no label: it comes from the folder through classInd (HandStand quirk included)
    assert split.test == [("v_Hammering_g01_c01", 1), ("v_HandStandPushups_g02_c03", 3), ("v_JumpRope_g03_c01", 5)]
    with pytest.raises(SplitError, match="split 2 does not exist"):
        protocol("ucf101", [], str(tmp_path / "ucfTrainTestlist"), "2", None)


def test_ucf101_lists_with_an_unknown_folder_name_the_file(tmp_path):
    folder = write_ucf_lists(tmp_path / "lists")
    (folder / "testlist01.txt").write_text("Surfing/v_Surfing_g01_c01.avi\n")
    with pytest.raises(SplitError, match=r"testlist01.txt: class folder 'Surfing'"):
        protocol("ucf101", [], str(folder), "1", None)


def test_ucf101_group_rule_and_class_order_without_lists():
    keys = [f"{c}/v_{'HandStandPushups' if c == 'HandstandPushups' else c}_g{g:02d}_c01.avi"
            for c in CLASSES for g in (1, 7, 8, 14, 15, 21, 22, 25)]
    proto = ucf101_names(keys, "all")
    assert proto.classes == CLASSES  # Hammering < HammerThrow, JumpingJack < JumpRope, folder spelling
    groups = {s.name: sorted({int(v.split("_g")[1][:2]) for v, _ in s.test}) for s in proto.splits}
    assert groups == {"1": [1, 7], "2": [8, 14], "3": [15, 21]}
    train1 = {int(v.split("_g")[1][:2]) for v, _ in proto.splits[0].train}
    assert train1 == {8, 14, 15, 21, 22, 25}
    # without folders the name gives the class: HandStandPushups and HandstandPushups are one class
    flat = ucf101_names(["v_HandStandPushups_g01_c01.avi", "v_HandstandPushups_g09_c01.avi"], "1")
    assert len(flat.classes) == 1


def test_hmdb51_split_files(tmp_path):
    folder = tmp_path / "testTrainMulti_7030_splits"
    folder.mkdir()
    for cls in ("brush_hair", "sword_exercise"):
        for n in (1, 2, 3):
            (folder / f"{cls}_test_split{n}.txt").write_text(
                f"{cls}_a_{n}.avi 1 \n(Rad)Schlag_die_Bank!_{cls}_f_cm_np1_le_med_{n}.avi 2 \n{cls}_c.avi 0 \n")
    proto = protocol("auto", [], str(folder), "all", None)
    assert proto.dataset == "hmdb51" and proto.classes == ["brush_hair", "sword_exercise"]
    assert len(proto.splits) == 3
    s2 = proto.splits[1]
    assert s2.train == [("brush_hair_a_2", 0), ("sword_exercise_a_2", 1)]
    assert s2.test == [("(Rad)Schlag_die_Bank!_brush_hair_f_cm_np1_le_med_2", 0),
                       ("(Rad)Schlag_die_Bank!_sword_exercise_f_cm_np1_le_med_2", 1)]
    (folder / "sword_exercise_test_split3.txt").unlink()
    with pytest.raises(SplitError, match="split 3 has no file for class.*sword_exercise"):
        protocol("hmdb51", [], str(folder), "3", None)


def test_folders_kfold_and_loo():
    keys = [f"{c}/v{i}.mp4" for c in ("beach", "forest", "street") for i in range(4)]
    kfold = protocol("auto", keys, None, "1", "2", seed=1)
    assert kfold.dataset == "folders" and len(kfold.splits) == 2 and kfold.by == "key"
    for split in kfold.splits:
        assert sorted(v for v, _ in split.train + split.test) == sorted(keys)
        assert sorted(c for _, c in split.test) == [0, 0, 1, 1, 2, 2]  # stratified
    loo = protocol("folders", keys, None, "1", "loo")
    assert len(loo.splits) == 12 and all(len(s.test) == 1 for s in loo.splits)
    with pytest.raises(SplitError, match="smallest class size"):
        protocol("folders", keys, None, "1", "5")
    with pytest.raises(SplitError, match="no class folder"):
        protocol("folders", ["loose.mp4", "b/x.mp4"], None, "1", "2")


def test_matching_reports_missing_videos_and_refuses_ambiguous_stems():
    proto = ucf101_names(["A/v_A_g01_c01.avi", "A/v_A_g09_c01.avi", "B/v_B_g01_c01.avi", "B/v_B_g09_c01.avi"], "1")
    rows, missing = match(proto, ["UCF-101/A/v_A_g01_c01.avi", "v_B_g09_c01.avi", "x/v_A_g09_c01.mp4"])
    assert rows == {"v_A_g01_c01": 0, "v_B_g09_c01": 1, "v_A_g09_c01": 2} and missing == ["v_B_g01_c01"]
    with pytest.raises(SplitError, match="both named 'v_A_g01_c01'"):
        match(proto, ["a/v_A_g01_c01.avi", "b/v_A_g01_c01.avi"])


def test_unknown_names_need_a_dataset():
    with pytest.raises(SplitError, match="cannot tell the dataset"):
        protocol("auto", ["some/video.mp4"], None, "1", None)
