"""The settings of an extraction run: everything a feature file's rows depend on, validated once.

A feature file records them (featurefile/schema.py writes and compares them) and a later run may add
to the file only with equal settings; `merge` joins only parts with equal settings (shards aside).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from c3d_extract.errors import UsageError

SHORT_RULES = ("loop", "edge", "skip")  # a video shorter than one window (extraction/clips.py)
PRECISIONS = ("fp32", "bf16", "fp16")
RESIZE_PLACES = ("workers", "device")


def check_resize_on(value: str) -> None:
    """UsageError (a ValueError) unless `value` is one of RESIZE_PLACES: a bool of the old
    `resize=True/False` signatures must not read as a place."""
    if value not in RESIZE_PLACES:
        raise UsageError(f"resize_on must be {' or '.join(RESIZE_PLACES)}, not {value!r}")


def parse_shard(text: str) -> tuple[int, int]:
    """`"I/N"` -> (I, N), with 0 <= I < N."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard must be I/N (e.g. 0/8), not {text!r}") from None
    return check_shard(index, count)


def check_shard(index: int, count: int) -> tuple[int, int]:
    """(I, N) if 0 <= I < N, else UsageError."""
    if count < 1 or not 0 <= index < count:
        raise UsageError(f"--shard {index}/{count}: I must be between 0 and N-1")
    return index, count


@dataclass(frozen=True)
class RunSettings:
    """What the rows of a feature file depend on. `clips` is the input spec's clip and pixel
    settings as recorded (InputSpec.to_dict()); `shard` is (I, N) or None."""

    model: str
    spec_name: str  # recorded as `spec`
    weights_sha256: str
    layers: tuple[str, ...]
    clips: Mapping[str, Any] = field(default_factory=dict)
    short_videos: str = "loop"
    precision: str = "fp32"
    resize_on: str = "workers"
    shard: Optional[tuple[int, int]] = None
    per_clip: bool = False
    segments: int = 0
    keep_partial: bool = False

    def __post_init__(self) -> None:
        if self.short_videos not in SHORT_RULES:
            raise UsageError(f"short videos: {self.short_videos!r} is not one of {', '.join(SHORT_RULES)}")
        if self.precision not in PRECISIONS:
            raise UsageError(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        check_resize_on(self.resize_on)
        if self.shard is not None:
            check_shard(*self.shard)
        if self.segments < 0:
            raise UsageError(f"segments must be positive, not {self.segments}")
        if not self.layers:
            raise UsageError("no layer to store")
        object.__setattr__(self, "layers", tuple(self.layers))

    @property
    def wants_clips(self) -> bool:
        """Rows need each video's clips, not only their mean (per-clip rows or segments)."""
        return self.per_clip or self.segments > 0

    def to_dict(self) -> dict:
        """The plain values a feature file records (its `settings` JSON); options at their default
        are left out, so files written before an option existed still compare equal."""
        values = {"model": self.model, "spec": self.spec_name, "weights_sha256": self.weights_sha256,
                  "layers": list(self.layers), **self.clips, "short_videos": self.short_videos,
                  "precision": self.precision, "resize_on": self.resize_on}
        if self.shard is not None:
            values["shard"] = f"{self.shard[0]}/{self.shard[1]}"
        if self.per_clip:
            values["per_clip"] = True
        if self.segments:
            values["segments"] = self.segments
        if self.keep_partial:
            values["keep_partial"] = True
        return values
