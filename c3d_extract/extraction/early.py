"""Decoding from a run's first second: a run into a new file hands its decoder processes their first
jobs before the parent imports torch, reads the weights and builds the network (seconds: `import
torch` alone took 3.3-3.7 s of a GPU run's 5.6-s start), so the rings are full when the first batch
is wanted. Only where the frames are known without the weights (the model's published weights, or
random ones: a checkpoint file names its own spec) and resized where they are decoded; the run takes
the pool only if it decodes exactly the run's jobs, with the frames and the decoder count the network
needs (`take`), else it is stopped. This module imports no torch."""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass, replace
from typing import Optional, Sequence

from c3d_extract.errors import UsageError
from c3d_extract.extraction.decode import DecoderSettings
from c3d_extract.extraction.devices import decoder_count, likely_device
from c3d_extract.extraction.inputs import VideoJob
from c3d_extract.extraction.workers import DecodePool
from c3d_extract.featurefile.journal_format import journal_path
from c3d_extract.models.inputs import input_of
from c3d_extract.options import RANDOM, ExtractOptions


@dataclass
class EarlyStart:
    """A DecodePool handed its first jobs before the network was built, and what it was told."""

    pool: DecodePool
    keys: tuple[str, ...]
    decoder: DecoderSettings
    workers: int


def all_to_do(output: Optional[str], options: ExtractOptions) -> bool:
    """Whether a run into `output` (None: into memory) will have every one of its jobs to do (no file
    or journal there yet, or --overwrite): then its decoders can start before the file is opened."""
    return output is None or options.overwrite or not (os.path.exists(output) or
                                                       os.path.exists(journal_path(output)))


def start(options: ExtractOptions, jobs: Sequence[VideoJob]) -> Optional[EarlyStart]:
    """Decoders decoding `jobs` now, where that can be decided before torch is imported; else None."""
    # GPU decoder threads (nvdec.py) share the jobs: they start with the network's device, after torch
    gpu_decodes = options.decode_on == "gpu"  # auto is cpu for now (nvdec.resolve_decode_on)
    if (options.engine != "local" or options.weights not in (None, RANDOM) or options.resize_on == "device"
            or gpu_decodes or not jobs):
        return None
    try:
        input_spec = replace(input_of(options.model or "c3d"), **options.clip_changes())
    except UsageError:  # reported, with its context, where the network is built
        return None
    workers = decoder_count(options.workers, likely_device(options.device))
    decoder = DecoderSettings.of(options, input_spec)
    pool = DecodePool(jobs, decoder, options.short, workers, options.timeout)
    atexit.register(pool.close)  # decoders ignore SIGTERM: a run refused later must not leave them behind
    pool.start()
    return EarlyStart(pool, tuple(job.key for job in jobs), decoder, workers)


def stop(early: Optional[EarlyStart]) -> None:
    """Stop `early`'s decoders now (a run that failed before it took them, in a process that goes on)."""
    if early is not None:
        atexit.unregister(early.pool.close)
        early.pool.close()


def take(early: Optional[EarlyStart], todo: Sequence[VideoJob], decoder: DecoderSettings,
         workers: int) -> Optional[DecodePool]:
    """`early`'s pool where it decodes exactly `todo` with `decoder`'s frames and `workers` decoders
    (the network's), else None, and a pool started for nothing is stopped."""
    if early is None:
        return None
    atexit.unregister(early.pool.close)  # from here the run closes it
    if (early.keys == tuple(job.key for job in todo) and early.workers == workers
            and early.decoder.input_spec.geometry == decoder.input_spec.geometry
            and replace(early.decoder, input_spec=decoder.input_spec) == decoder):
        return early.pool
    early.pool.close()
    return None
