"""The staging of batches (extraction/batches.py): clips written into slots of a ring, results in the
order batches were started, a clip's features independent of its batch neighbours and of the number of
replicas, a restarted video's old clips out of the open batch; the defaults that depend on the device."""

import numpy as np
import pytest
import torch

from c3d_extract.extraction import devices
from c3d_extract.extraction.attempts import Attempts
from c3d_extract.extraction.batches import Batches
from c3d_extract.extraction.pipeline import BatchRunner
from c3d_extract.extraction.runtime import Runtime
from c3d_extract.models.registry import RES3D_SPORTS1M
from c3d_extract.weights.load import load_weights

SPEC = RES3D_SPORTS1M.input  # 8 frames of 112x112, mean 128, BGR


@pytest.fixture(scope="module")
def net():
    return load_weights("random", "res3d", seed=3).net.eval()


@pytest.fixture(scope="module")
def clips():
    return np.random.default_rng(5).integers(0, 256, (7, SPEC.frames, *SPEC.crop, 3), dtype=np.uint8)


def by_hand(net, clip: np.ndarray) -> np.ndarray:
    """pool5 of one clip alone, normalised here as the Caffe prototxt says (BGR, minus 128), not by the
    code under test."""
    x = torch.from_numpy(clip[..., ::-1].astype(np.float32) - 128.0).permute(3, 0, 1, 2)[None]
    with torch.inference_mode():
        return net(x.contiguous(), ["pool5"])["pool5"].flatten(1)[0].numpy()


def run_batches(runners, items, drop=None, slots=None):
    got = []
    batches = Batches(runners, lambda outputs, rows: got.extend(
        (row, outputs["pool5"][i].copy()) for i, row in enumerate(rows)), slots=slots)
    try:
        for n, (key, start, attempt, clip) in enumerate(items):
            if drop and n == drop[0]:  # as extract() does when a video's next attempt starts
                attempts = Attempts()
                assert attempts.newer(*drop[1:]) and not attempts.newer(*drop[1:])
                batches.drop_stale(drop[1], attempts)
            batches.add(key, start, attempt, clip)
            batches.take()
        batches.finish()
    finally:
        batches.close()
    return got


def test_every_clip_comes_back_in_order_equal_to_a_forward_of_it_alone(net, clips):
    runner = BatchRunner(net, ["pool5"], SPEC, Runtime(torch.device("cpu"), "fp32"), 3)
    items = [(f"v{i % 2}", 8 * i, 0, clips[i]) for i in range(len(clips))]  # 7 clips: 2 full batches and 1 row
    got = run_batches([runner], items, slots=2)  # a ring smaller than the batches: slots are reused
    assert [row for row, _ in got] == [(key, start, attempt) for key, start, attempt, _ in items]
    for (_, _, _, clip), (_, value) in zip(items, got):
        np.testing.assert_allclose(value, by_hand(net, clip), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_replicas_give_what_one_device_gives(net, clips):
    one = BatchRunner(net, ["pool5"], SPEC, Runtime(torch.device("cpu"), "fp32"), 2)
    items = [("v", 8 * i, 0, clips[i]) for i in range(len(clips))]
    single = run_batches([one], items)
    pair = run_batches([one, BatchRunner(net, ["pool5"], SPEC, Runtime(torch.device("cpu"), "fp32"), 2)], items)
    assert [row for row, _ in pair] == [row for row, _ in single]
    for (_, a), (_, b) in zip(single, pair):
        np.testing.assert_array_equal(a, b)


def test_a_restarted_video_leaves_the_open_batch(net, clips):
    runner = BatchRunner(net, ["pool5"], SPEC, Runtime(torch.device("cpu"), "fp32"), 4)
    items = [("a", 0, 0, clips[0]), ("b", 0, 0, clips[1]), ("a", 8, 0, clips[2]), ("a", 0, 1, clips[3]),
             ("b", 8, 0, clips[4])]
    got = run_batches([runner], items, drop=(3, "a", 1))  # a's attempt 1 comes: its attempt 0 goes
    assert [row for row, _ in got] == [("b", 0, 0), ("a", 0, 1), ("b", 8, 0)]
    for (_, value), clip in zip(got, (clips[1], clips[3], clips[4])):
        np.testing.assert_allclose(value, by_hand(net, clip), rtol=1e-4, atol=1e-5)


def test_one_attempt_rule_says_what_a_restart_makes_stale():
    attempts = Attempts()
    assert attempts.current("a", 0) and not attempts.newer("a", 0)  # every video's first attempt
    assert attempts.newer("a", 2) and not attempts.newer("a", 2) and not attempts.newer("a", 1)
    assert [attempts.current("a", n) for n in range(4)] == [False, False, True, True]
    assert attempts.current("b", 0) and attempts.current(("a", "nonce"), 0)  # keys are independent


def test_torch_clips_are_staged_like_numpy_ones(net, clips):
    runner = BatchRunner(net, ["pool5"], SPEC, Runtime(torch.device("cpu"), "fp32"), 2)
    items = [("v", 8 * i, 0, clips[i]) for i in range(3)]
    as_numpy = run_batches([runner], items)
    as_torch = run_batches([runner], [(k, s, a, torch.from_numpy(c)) for k, s, a, c in items])
    for (_, a), (_, b) in zip(as_numpy, as_torch):
        np.testing.assert_array_equal(a, b)


def test_decoder_count_and_batch_size_follow_the_device(monkeypatch):
    monkeypatch.setattr(devices, "usable_cores", lambda: 16)
    assert devices.default_workers(torch.device("cuda")) == 15  # the GPU computes, the cores decode
    assert devices.default_workers(torch.device("cpu")) == 4
    monkeypatch.setattr(devices, "usable_cores", lambda: 2)
    assert devices.default_workers(torch.device("cpu")) == devices.default_workers(torch.device("cuda")) == 1
    assert devices.default_batch_size(torch.device("cpu")) == 4
    assert devices.default_batch_size(torch.device("cuda")) == 64


def test_only_reduced_precisions_search_for_cudnn_algorithms():
    assert Runtime(torch.device("cuda"), "bf16").searches and Runtime(torch.device("cuda"), "fp16").searches
    assert not Runtime(torch.device("cuda"), "fp32").searches  # 18-25 s with TF32 off, for nothing
    assert not Runtime(torch.device("cpu"), "bf16").searches
