"""The decoder -> parent transport: a real decoder process (decode.serve, spawned as DecodePool spawns it)
sends nothing but tagged Messages, in the order a video's stream has, and the frames that cross the pipe
are the frames PyAV decodes."""

import multiprocessing as mp
import time

import av
import numpy as np

from c3d_extract.extraction.decode import DecoderSettings, serve
from c3d_extract.extraction.inputs import VideoJob
from c3d_extract.extraction.messages import FRAMES, IDLE, ITEM, RING, End, Failed, Message, read_frames_into
from c3d_extract.models.registry import RES3D_SPORTS1M
from bench.support.videos import moving_frames, write_video


def _messages(decoder: DecoderSettings, jobs: list[VideoJob]) -> tuple[list[Message], np.ndarray]:
    """Every message a spawned decoder process sends for `jobs` (until its pipe closes), and the raw
    frames that followed its FRAMES messages, concatenated."""
    context = mp.get_context("spawn")
    task_reader, task_writer = context.Pipe(duplex=False)
    result_reader, result_writer = context.Pipe(duplex=False)
    heartbeat = context.Value("d", time.time(), lock=False)
    process = context.Process(target=serve, args=(task_reader, result_writer, heartbeat), daemon=True)
    process.start()
    task_reader.close()
    result_writer.close()
    for task in (decoder, *jobs, None):
        task_writer.send(task)
    messages, frames = [], []
    try:
        while True:
            try:
                message = result_reader.recv()
            except EOFError:
                break
            messages.append(message)
            if isinstance(message, Message) and message.kind == FRAMES:
                frames.append(np.empty(message.payload.shape, np.uint8))
                read_frames_into(result_reader, frames[-1])
    finally:
        process.join(timeout=60)
        task_writer.close()
        result_reader.close()
    return messages, np.concatenate(frames) if frames else np.empty((0,), np.uint8)


def test_a_decoder_process_sends_only_tagged_messages_and_the_decoded_frames(tmp_path):
    video = write_video(tmp_path / "v.mp4", moving_frames(30, 64, 96))
    with av.open(str(video)) as container:  # what PyAV itself decodes, converted by FFmpeg's own call
        expected = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
    # resized on the device: no ring, the frames as decoded cross the pipe itself
    decoder = DecoderSettings(RES3D_SPORTS1M.input, "device")
    messages, frames = _messages(decoder, [VideoJob("v", str(video)), VideoJob("gone", str(tmp_path / "no.mp4"))])

    assert all(type(message) is Message for message in messages)
    kinds = [message.kind for message in messages]
    assert set(kinds) <= {FRAMES, ITEM, IDLE} and RING not in kinds
    # one video's frames, then how it ended, then idle; the missing file: its failure, then idle
    first_item = kinds.index(ITEM)
    assert kinds[:first_item] == [FRAMES] * first_item and first_item >= 1
    assert kinds[first_item:] == [ITEM, IDLE, ITEM, IDLE]
    end, failed = messages[first_item].payload, messages[first_item + 2].payload
    assert isinstance(end, End) and end.key == "v" and end.facts["num_frames"] == 30
    assert isinstance(failed, Failed) and failed.key == "gone" and "no such file" in failed.error
    assert all(message.payload.key == "v" and message.payload.attempt == 0 for message in messages[:first_item])
    assert frames.shape == expected.shape == (30, 64, 96, 3)
    assert np.array_equal(frames, expected)
