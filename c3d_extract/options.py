"""The options of one extraction run, validated once: what `c3d-extract`'s flags say, and what a script
passes to `api.extract`/`api.build_extractor`. The API resolves them (weights, device, precision) into an
Extractor; the engines and the decoders read the parts they need from here (no option is threaded through
the layers by hand). No torch: the command line validates its flags before torch is imported.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Mapping, Optional, Sequence, Union

from c3d_extract.errors import UsageError
from c3d_extract.settings import PRECISIONS, RESIZE_PLACES, SHORT_RULES, check_shard, parse_shard

ENGINES = ("local", "ray")
RAY_CONNECT_TIMEOUT = 30.0  # seconds to join a Ray cluster before the run is refused
RESIZE_CHOICES = ("auto", *RESIZE_PLACES)  # what --resize-on takes: auto = workers (faithful everywhere)
PRECISION_CHOICES = ("auto", *PRECISIONS)
# what --decode-on takes: cpu (decoder processes only), gpu (NVDEC threads besides them: extraction/nvdec.py),
# auto (gpu where the network is on CUDA and PyAV has NVDEC, else cpu)
DECODE_CHOICES = ("cpu", "gpu", "auto")  # what --precision takes: a file records one of the others

RANDOM = "random"  # --weights random: random weights of the model (smoke runs), no file


@dataclass(frozen=True)
class ExtractOptions:
    """Everything a run is told. None means "the default for the model or the device" (resolved by
    api.build_extractor); `layers` may be a comma list, `shard` "I/N" (kept as (I, N))."""

    # what the rows depend on (recorded in the file: settings.RunSettings)
    model: Optional[str] = None
    layers: Optional[Union[str, Sequence[str]]] = None
    weights: Optional[str] = None
    seed: int = 0                   # of --weights random, and of --verify's sample
    mean: Optional[str] = None      # a mean file or per-channel values instead of the spec's
    clip_len: Optional[int] = None
    stride: Optional[int] = None
    frame_step: Optional[int] = None
    short: str = "loop"             # SHORT_RULES
    precision: str = "auto"         # PRECISION_CHOICES
    resize_on: str = "auto"         # RESIZE_CHOICES; under Ray always where frames are decoded
    decode_on: str = "auto"         # DECODE_CHOICES; under Ray always cpu
    keep_partial: bool = False      # a video that breaks while decoding keeps the frames before the damage
    per_clip: bool = False
    segments: Optional[int] = None
    shard: Optional[Union[str, tuple[int, int]]] = None
    # where and how it runs
    device: Optional[str] = None    # None: $C3D_EXTRACT_DEVICE, else auto; a comma list: one replica each
    batch_size: Optional[int] = None
    workers: Optional[int] = None   # decoder processes of the local engine
    timeout: float = 300.0          # seconds a decoder may make no progress
    vp8_check: bool = True          # VP8 decoded with slice threads, which report damage (video.py)
    engine: str = "local"           # ENGINES
    ray_address: Optional[str] = None
    ray_connect_timeout: float = RAY_CONNECT_TIMEOUT
    # inputs and output
    root: Optional[str] = None
    ext: Optional[str] = None
    storage_options: Optional[Mapping] = None  # fsspec's, for URL inputs: never recorded or shown
    overwrite: bool = False
    retry_failed: bool = False
    quiet: bool = True              # no download progress from the weights

    def __post_init__(self) -> None:
        if isinstance(self.layers, str):
            names = tuple(name.strip() for name in self.layers.split(",") if name.strip())
            object.__setattr__(self, "layers", names or None)
        elif self.layers is not None:
            object.__setattr__(self, "layers", tuple(self.layers))
        if isinstance(self.shard, str):  # "" is no shard (a wrapper's unset $SHARD), as before
            object.__setattr__(self, "shard", parse_shard(self.shard) if self.shard else None)
        elif self.shard is not None:
            object.__setattr__(self, "shard", check_shard(*self.shard))
        _one_of("engine", self.engine, ENGINES)
        _one_of("resize_on", self.resize_on, RESIZE_CHOICES)
        _one_of("decode_on", self.decode_on, DECODE_CHOICES)
        _one_of("short videos", self.short, SHORT_RULES)
        _one_of("precision", self.precision, PRECISION_CHOICES)
        for name in ("clip_len", "stride", "frame_step", "batch_size", "workers", "segments"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"{name} must be a positive whole number, not {value}")
        for name in ("timeout", "ray_connect_timeout"):
            value = getattr(self, name)
            if not value > 0:
                raise UsageError(f"{name} must be a positive number of seconds, not {value}")
        if self.storage_options is not None and not isinstance(self.storage_options, Mapping):
            raise UsageError("storage_options must be a mapping, e.g. {\"endpoint_url\": \"http://host:8333\"}")

    def clip_changes(self) -> dict[str, int]:
        """The clip settings given (clip_len, stride, frame_step), as changes to a spec's InputSpec."""
        return {name: getattr(self, name) for name in ("clip_len", "stride", "frame_step")
                if getattr(self, name) is not None}

    @classmethod
    def of(cls, options: Optional["ExtractOptions"] = None, **changes) -> "ExtractOptions":
        """`options` with `changes` (keywords named like the fields; a misspelt one is a UsageError)."""
        unknown = set(changes) - {f.name for f in fields(cls)}
        if unknown:
            raise UsageError(f"unknown option(s): {', '.join(sorted(unknown))}")
        return replace(options or cls(), **changes)


def _one_of(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise UsageError(f"unknown {name} {value!r}; use {', '.join(choices[:-1])} or {choices[-1]}")
