"""A run's options resolved once: the devices, the precision, where frames are decoded and resized,
how many decoder processes, the batch size, the engine and what the decoders are told. api.build_extractor
makes the plan (`resolve`, then `with_input` once the weights name the frames); the engines, the decoder
pool and the early start read it and decide nothing again (scikit-learn's rule: validate at fit, keep
the result). A feature file records the parts the rows depend on (settings.RunSettings)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence

import torch

from c3d_extract.errors import UsageError
from c3d_extract.extraction.decode import DecoderSettings
from c3d_extract.extraction.devices import decoder_count, default_batch_size, default_device
from c3d_extract.extraction.nvdec import resolve_decode_on
from c3d_extract.extraction.runtime import resolve_device, resolve_precision
from c3d_extract.models.preprocess import InputSpec
from c3d_extract.options import ExtractOptions


def require_ray():
    """The ray module, or UsageError naming the install that brings Ray Data."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UsageError("--engine ray needs Ray Data: pip install 'ray[data]' (or this package's [ray] extra)") from None
    return ray


@dataclass(frozen=True)
class RunPlan:
    """What a run does, resolved: `devices` (one network replica each), `precision` (fp32, bf16 or
    fp16), `resize_on` ("workers" or "device"; under Ray always "workers"), `decode_on` ("cpu" or
    "gpu": NVDEC threads too), `workers` (the local engine's decoder processes), `batch_size`,
    `engine` and `decoder` (the decoders' settings; None until the input spec is known)."""

    devices: tuple[torch.device, ...]
    precision: str
    resize_on: str
    decode_on: str
    workers: int
    batch_size: int
    engine: str
    decoder: Optional[DecoderSettings] = None

    @property
    def device(self) -> torch.device:
        """The first device: the one the decoders' defaults and NVDEC follow."""
        return self.devices[0]

    @classmethod
    def resolve(cls, options: ExtractOptions, devices: Optional[Sequence[torch.device]] = None) -> "RunPlan":
        """The plan `options` say, on `devices` (already resolved; default: the options' `device`, a
        comma list, else $C3D_EXTRACT_DEVICE, else auto). UsageError for a mix of CPU and CUDA devices,
        a precision or `decode_on` the device cannot run, or Ray where Ray Data is not installed."""
        if devices is None:
            name = options.device or default_device()
            devices = [resolve_device(part.strip()) for part in name.split(",")]
            if len({device.type for device in devices}) > 1:
                raise UsageError(f"--device {name}: mix of CPU and CUDA devices")
        if options.engine == "ray":
            require_ray()
        first = devices[0]
        on_device = options.resize_on == "device" and options.engine == "local"  # Ray: where decoded
        return cls(devices=tuple(devices), precision=resolve_precision(options.precision, first),
                   resize_on="device" if on_device else "workers",
                   decode_on=resolve_decode_on(options.decode_on, first, options.engine),
                   workers=decoder_count(options.workers, first),
                   batch_size=options.batch_size or default_batch_size(first), engine=options.engine)

    def with_input(self, options: ExtractOptions, input_spec: InputSpec) -> "RunPlan":
        """The plan with its decoders' settings, once the frames the network takes are known."""
        return replace(self, decoder=DecoderSettings.of(options, input_spec, self.resize_on))
