"""From video files to per-video features: finding videos, decoding, clips, batches, engines.

Where each module runs, and what crosses each step (the local engine; `--engine ray` below):

    parent process (c3d-extract, api.run_jobs)
      inputs.py, remote.py (listing)        paths, URLs, tar shards, @lists -> VideoJob
      workers.py  DecodePool                sends each decoder its DecoderSettings, then VideoJobs
          |                                 (spawned processes: a pipe each, and a shared ring)
          v
    decoder process (one per core; no torch)
      decode.py   serve, decode_job         VideoJob -> Frames chunks, then End | Failed
                                            (ShardRead after a tar shard; messages.py)
      video.py    readers_for               pyav_reader.py, then decord_reader.py (reader_base.py);
                                            damage.py (declared length, holes, VP8), ffmpeg_log.py
      remote.py (fetch), shards.py (tar members)
      ring.py     RingWriter                cropped frames into the shared ring; others on the pipe
                                            (messages.FrameSender); each message one tagged Message
          |
          v
    parent process again
      ring.py, workers.py                   the frames read where the clips are cut
      nvdec.py    DeviceDecoders (threads)  --decode-on gpu: VideoJobs from the same queue (SharedJobs)
                                            -> Frames on the GPU, End | GiveBack (to the processes)
      assemble.py ClipAssembler (clips.py)  Frames/End/Failed -> Clip | Finished | Failed
      batches.py  Batches                   clips of several videos -> batch slots on each device
      pipeline.py BatchRunner (runtime.py)  a batch -> per-layer activations, one row per clip
      collector.py Collector, Aggregator    clip rows -> running float64 sums -> mean, L2 -> rows
          |                                 of a Sink: FeatureStore (a file) or api.Arrays (memory)
          v
      featurefile/writer.py -> journal.py (each video durably) -> fold.py (out.h5 when the run ends)

Under `--engine ray` (engine_ray.py) the same steps run in Ray actors (ray_actors.py): a CPU actor
`_Decode` runs a DecodePool of one decoder process over a block of videos and relays
Clip/Finished/Failed as rows (kind clip, last, done, fail, read); a network actor `_Forward` runs a
BatchRunner and returns one row per video (partial_sums): a `video` row, the whole journal record of
a video whose clips were all in the call (writer.video_record), or a `part` row, the sum of its
clips there; the driver (ray_driver.Driver, in the parent) appends the records to the store as they
came and adds up the parts (Collector). The options of a run (options.ExtractOptions) are resolved
once into a plan (plan.RunPlan: devices, precision, resize and decode places, decoder count, batch
size, engine) by api.build_extractor; they reach a decoder as the plan's DecoderSettings.
"""
