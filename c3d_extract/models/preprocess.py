"""Input specs: how decoded RGB frames become the tensor a network was trained on.

Each model spec (models/c3d.py, models/res3d.py) holds one InputSpec with its exact constants; this
module holds only the generic operations, so no `if model == ...` exists anywhere.

Decoder processes unpickle InputSpec and crop with it, so torch is imported only inside the methods
that build tensors (where the network runs): a decoder process starts without torch (seconds of CPU).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional, Sequence

import cv2
import numpy as np

from c3d_extract.errors import UsageError

if TYPE_CHECKING:
    import torch


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize uint8 frames (N, H, W, 3) to (N, h, w, 3) with OpenCV's `cv2.resize(INTER_LINEAR)`,
    the call Caffe's C3D data layer made: its fixed-point arithmetic bit for bit (a float bilinear
    resize differs by a grey level on ~10% of the pixels, which moved Res3D res5b to cosine 0.9998)."""
    if frames.shape[1:3] == size:
        return frames
    out = np.empty((len(frames), size[0], size[1], frames.shape[3]), np.uint8)
    for frame, target in zip(frames, out):
        cv2.resize(frame, (size[1], size[0]), dst=target, interpolation=cv2.INTER_LINEAR)
    return out


@dataclass(frozen=True)
class InputSpec:
    """Clip geometry and pixel normalisation of one set of weights.

    Clips are windows of `clip_len` consecutive video frames every `stride` frames, of which every
    `frame_step`-th frame is fed to the network. Frames are resized to `resize` (H, W), cropped to
    `crop` at `crop_offset` (row, column), put in `channels` order, then
    `(value * value_scale - mean) / std` per channel.
    """

    clip_len: int
    stride: int
    frame_step: int
    resize: Optional[tuple[int, int]]        # fixed (H, W), or None with short_side
    crop: tuple[int, int]
    crop_offset: Optional[tuple[int, int]]   # None: centred
    channels: str  # "BGR" or "RGB"
    value_scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    mean_note: str = ""
    # Optional full mean cube (3, clip frames, resize H, resize W) in `channels` order, subtracted
    # at the crop offsets instead of `mean` (Caffe C3D v1.0). Set by the weights readers.
    mean_cube: Optional[np.ndarray] = field(default=None, compare=False, repr=False)
    # Resize so the shorter side has this many pixels (aspect kept) instead of a fixed `resize`.
    short_side: Optional[int] = None

    def __post_init__(self) -> None:
        if self.clip_len < 1 or self.stride < 1 or self.frame_step < 1:
            raise UsageError("clip_len, stride and frame_step must be positive")
        if self.clip_len % self.frame_step:
            raise UsageError(f"clip_len {self.clip_len} is not a multiple of frame_step {self.frame_step}")
        if self.channels not in ("BGR", "RGB"):
            raise UsageError(f"channels must be BGR or RGB, not {self.channels!r}")
        if (self.resize is None) == (self.short_side is None):
            raise UsageError("give either a fixed resize or a short_side")
        if self.resize is not None:
            bottom, right = (o + c for o, c in zip(self.offset(self.resize), self.crop))
            if bottom > self.resize[0] or right > self.resize[1]:
                raise UsageError(f"crop {self.crop} at {self.crop_offset} does not fit in {self.resize}")
        elif self.short_side < max(self.crop):
            raise UsageError(f"crop {self.crop} does not fit in a short side of {self.short_side}")
        if self.mean_cube is not None:
            if self.resize is None:
                raise UsageError("a mean cube needs a fixed resize")
            expected = (3, self.frames, *self.resize)
            if tuple(self.mean_cube.shape) != expected:
                raise UsageError(f"mean cube has shape {tuple(self.mean_cube.shape)}, expected {expected}")

    @property
    def geometry(self) -> tuple:
        """What decoders and clip cutting read of this spec (windows, resize, crop); the pixel
        normalisation is not among it."""
        return (self.clip_len, self.stride, self.frame_step, self.resize, self.short_side, self.crop,
                self.crop_offset)

    @property
    def frames(self) -> int:
        """Number of frames in one network input clip."""
        return self.clip_len // self.frame_step

    def size_for(self, height: int, width: int) -> tuple[int, int]:
        """The resized frame size for a decoded frame size."""
        if self.resize is not None:
            return self.resize
        scale = self.short_side / min(height, width)
        return (max(self.short_side, round(height * scale)), max(self.short_side, round(width * scale)))

    def offset(self, size: tuple[int, int]) -> tuple[int, int]:
        """Where the crop starts in a resized frame: the spec's offset, else centred (integer division)."""
        if self.crop_offset is not None:
            return self.crop_offset
        return ((size[0] - self.crop[0]) // 2, (size[1] - self.crop[1]) // 2)

    def frame_used(self, index: int) -> bool:
        """Whether a clip can read frame `index` of a video. Windows start every `stride` frames and
        read every `frame_step`-th of their frames, so where `stride` is a multiple of `frame_step`
        only the frames at multiples of `frame_step` are read (Res3D: the even ones); a video shorter
        than one window pads its one clip from any of its first `clip_len` frames (clips.short_indices),
        so those are always used."""
        return index < self.clip_len or self.stride % self.frame_step != 0 or index % self.frame_step == 0

    def crop_frames(self, frames: np.ndarray, first: Optional[int] = None) -> np.ndarray:
        """Decoded uint8 RGB frames (N, H, W, 3) -> resized (cv2) and cropped uint8 (N, ch, cw, 3),
        one frame at a time through a resize buffer that stays in the cache. With `first`, the index
        of frames[0] in its video, a frame no clip reads (`frame_used`) is not resized: it stays black."""
        size = self.size_for(frames.shape[1], frames.shape[2])
        top, left = self.offset(size)
        out = np.empty((len(frames), self.crop[0], self.crop[1], frames.shape[3]), np.uint8)
        resized = np.empty((size[0], size[1], frames.shape[3]), np.uint8) if frames.shape[1:3] != size else None
        for k, frame in enumerate(frames):
            if first is not None and not self.frame_used(first + k):
                out[k] = 0
                continue
            if resized is not None:
                cv2.resize(frame, (size[1], size[0]), dst=resized, interpolation=cv2.INTER_LINEAR)
                frame = resized
            out[k] = frame[top: top + self.crop[0], left: left + self.crop[1]]
        return out

    def crop_frames_device(self, frames: torch.Tensor) -> torch.Tensor:
        """crop_frames on the frames' torch device (`--resize-on device`, the GPU reader): OpenCV's
        fixed-point INTER_LINEAR in integer torch code (models/pixels.py), bit for bit, computing only
        the cropped window. Every frame is resized (no `first`: the device does not skip)."""
        from c3d_extract.models.pixels import resize_crop

        size = self.size_for(frames.shape[1], frames.shape[2])
        return resize_crop(frames, size, self.offset(size), self.crop)

    def constants(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The mean (per channel, or the cube cropped at the crop offset) and the std (None when 1),
        as float32 tensors on `device` shaped to broadcast over (B, 3, T, h, w). Build them once."""
        import torch

        if self.mean_cube is not None:
            top, left = self.offset(self.resize)
            cube = self.mean_cube[:, :, top: top + self.crop[0], left: left + self.crop[1]]
            mean = torch.as_tensor(np.ascontiguousarray(cube), dtype=torch.float32, device=device)[None]
        else:
            mean = torch.tensor(self.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1, 1)
        std = None if self.std == (1.0, 1.0, 1.0) else \
            torch.tensor(self.std, dtype=torch.float32, device=device).view(1, 3, 1, 1, 1)
        return mean, std

    def normalize(self, clips: torch.Tensor, dtype: Optional[torch.dtype] = None,
                  constants: Optional[tuple[torch.Tensor, Optional[torch.Tensor]]] = None) -> torch.Tensor:
        """Cropped uint8 RGB clips (B, T, h, w, 3) -> network input (B, 3, T, h, w) of `dtype`.

        The arithmetic runs in float32 on the clips' device and is cast at the end, so a low
        precision only rounds the final input once. Pass `constants` (from `constants(device)`) to
        avoid rebuilding the mean for every batch. `dtype` defaults to float32.
        """
        mean, std = constants if constants is not None else self.constants(clips.device)
        x = clips.permute(0, 4, 1, 2, 3).float()
        if self.channels == "BGR":
            x = x.flip(1)
        if self.value_scale != 1.0:
            x = x * self.value_scale
        x = x - mean
        if std is not None:
            x = x / std
        return x if dtype is None else x.to(dtype)

    def describe_mean(self) -> str:
        """One line saying which mean was subtracted (recorded in the feature file)."""
        if self.mean_cube is not None:
            return f"mean cube {tuple(self.mean_cube.shape)} cropped at {self.crop_offset}; {self.mean_note}"
        return f"per-channel {self.channels} mean {list(self.mean)}; {self.mean_note}".rstrip("; ")

    def to_dict(self) -> dict:
        """The clip and pixel settings as plain values (provenance and compatibility checks)."""
        return {
            "clip_len": self.clip_len, "stride": self.stride, "frame_step": self.frame_step,
            "resize": list(self.resize) if self.resize else f"short side {self.short_side}",
            "crop": list(self.crop), "crop_offset": list(self.crop_offset) if self.crop_offset else "centre",
            "channels": self.channels, "value_scale": self.value_scale,
            "mean": self.describe_mean(), "std": list(self.std),
        }


def parse_mean(text: str) -> tuple[float, float, float]:
    """`"B,G,R"` or one value -> a per-channel tuple (in the spec's channel order)."""
    try:
        values: Sequence[float] = [float(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"mean must be one number or three comma-separated numbers, got {text!r}") from None
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise UsageError(f"mean must be one number or three comma-separated numbers, got {text!r}")
    return (values[0], values[1], values[2])
