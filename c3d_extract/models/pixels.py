"""The CPU path's pixel arithmetic as integer torch code for any device, bit for bit.

Two conversions decide every pixel a network sees, and both are integer arithmetic:
- YUV 4:2:0 -> rgb24: what PyAV's VideoReformatter (FFmpeg 8's swscale, libswscale 9.5) does in
  pyav_reader.PyAVReader: the unscaled yuv420p converter, which on x86-64 is swscale's SSSE3 routine
  (`yuv_2_rgb.asm`: luma and chroma scaled by 8, 16-bit `pmulhw` products of coefficients rounded to
  13 bits, the nearest chroma sample of each 2x2 block, saturating adds). Not swscale's C tables:
  those round differently (36% of the values, by up to 3, on real 720x528 frames, forced with
  av_force_cpu_flags(0): bench/results.md), and swscale never takes them on an x86-64 CPU (SSSE3 is
  older than any machine this runs on; ARM's NEON routine is another matter: README Limits). Odd frame heights go through swscale's scaling path instead (chroma
  interpolated): not reproduced here, those videos stay with the CPU readers.
- OpenCV 5.1's `cv2.resize(INTER_LINEAR)` of uint8 frames: 11-bit fixed-point taps (float32
  positions, rounded to even), a horizontal pass into int32, and the vertical pass every column gets
  in this build, whatever the CPU dispatch (AVX-512, AVX2, SSE, IPP off, `setUseOptimized(False)`:
  all measured): `((b0*(S0>>4))>>16 + (b1*(S1>>4))>>16 + 2) >> 2`, clamped. Exact 2x downscales
  (OpenCV's area shortcut) give the same numbers.
tests/test_device_pixels.py holds both to PyAV and OpenCV on real decoded frames: max abs diff 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import numpy as np
import torch

# swscale's ff_yuv2rgb_coeffs (crv, cbu, cgu, cgv) by FFmpeg's AVColorSpace value; the values a
# stream may carry for BT.601 (unspecified, BT.470BG, SMPTE 170M) and BT.709. swscale takes BT.601's
# for anything it has no row for; other matrices (FCC, SMPTE 240M, BT.2020) are not reproduced here.
_BT601 = (104597, 132201, 25675, 53279)
_BT709 = (117489, 138438, 13975, 34925)
MATRICES = {1: ("bt709", _BT709), 2: ("bt601", _BT601), 5: ("bt601", _BT601), 6: ("bt601", _BT601)}
AVCOL_RANGE_JPEG = 2
PLANE_LAYOUTS = ("yuv420p", "yuvj420p", "nv12")  # 8-bit 4:2:0: planar (CPU decoders), interleaved (NVDEC)


class UnsupportedPixels(ValueError):
    """A frame this module cannot convert exactly as the CPU path does (another pixel format, matrix,
    an odd height): the video belongs to the CPU readers. str() says why."""


def _c_div(a: int, b: int) -> int:
    """C's integer division (truncates toward zero), as swscale's table setup computes."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def _round_to_int16(value: int) -> int:
    """swscale's roundToInt16: (value + 2^15) >> 16, clamped to int16."""
    return max(-0x7FFF - 1, min(0x7FFF, (value + (1 << 15)) >> 16))


@dataclass(frozen=True)
class YuvToRgb:
    """swscale's SSSE3 yuv420p -> rgb24 for one matrix and range (ff_yuv2rgb_c_init_tables' 16-bit
    coefficients, brightness 0, contrast and saturation 1): `planar` for Y, U, V planes, `nv12` for
    Y and interleaved UV planes, both uint8 tensors on any device, batched over leading dimensions."""

    matrix: str
    full_range: bool
    y_coeff: int
    y_offset: int
    vr: int
    ub: int
    ug: int
    vg: int

    @classmethod
    def of(cls, colorspace: int, full_range: bool) -> "YuvToRgb":
        """The conversion for a frame's AVColorSpace value and range (UnsupportedPixels for a matrix
        other than BT.601 or BT.709)."""
        if colorspace not in MATRICES:
            raise UnsupportedPixels(f"colour matrix {colorspace} (FFmpeg's AVColorSpace) is neither "
                                    f"BT.601 nor BT.709")
        name, (crv, cbu, cgu, cgv) = MATRICES[colorspace]
        cgu, cgv = -cgu, -cgv
        cy, oy = 1 << 16, 0
        if full_range:
            crv, cbu, cgu, cgv = (_c_div(c * 224, 255) for c in (crv, cbu, cgu, cgv))
        else:
            cy, oy = _c_div(cy * 255, 219), 16 << 16
        scaled = [_round_to_int16(c * (1 << 13)) for c in (cy, crv, cbu, cgu, cgv)]
        return cls(name, full_range, scaled[0], _round_to_int16(oy * 8), *scaled[1:3], *scaled[3:5])

    def planar(self, y: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """(..., H, W) luma and (..., ceil(H/2), ceil(W/2)) chroma uint8 -> (..., H, W, 3) rgb24."""
        height, width = y.shape[-2:]
        if height % 2:
            raise UnsupportedPixels(f"odd frame height {height} (swscale scales such frames instead)")
        u, v = u.to(torch.int32) * 8 - 1024, v.to(torch.int32) * 8 - 1024
        red = _expand((v * self.vr) >> 16, height, width)
        green = _expand(((u * self.ug) >> 16) + ((v * self.vg) >> 16), height, width)
        blue = _expand((u * self.ub) >> 16, height, width)
        luma = ((y.to(torch.int32) * 8 - self.y_offset) * self.y_coeff) >> 16
        return torch.stack([luma + red, luma + green, luma + blue], -1).clamp_(0, 255).to(torch.uint8)

    def points(self, y: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The rgb24 values (..., 3) as int32 of luma samples `y` and the chroma samples `u`, `v` of
        their 2x2 blocks, all of one shape: `planar`'s arithmetic, sample by sample."""
        u, v = u.to(torch.int32) * 8 - 1024, v.to(torch.int32) * 8 - 1024
        luma = ((y.to(torch.int32) * 8 - self.y_offset) * self.y_coeff) >> 16
        rgb = torch.stack([luma + ((v * self.vr) >> 16), luma + ((u * self.ug) >> 16) + ((v * self.vg) >> 16),
                           luma + ((u * self.ub) >> 16)], -1)
        return rgb.clamp_(0, 255)

    def nv12(self, y: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
        """(..., H, W) luma and (..., ceil(H/2), ceil(W/2), 2) interleaved chroma (NVDEC's layout)
        -> (..., H, W, 3) rgb24, equal to `planar` on the same samples."""
        return self.planar(y, uv[..., 0], uv[..., 1])


def _expand(chroma: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Each chroma sample to its 2x2 block of luma positions (the nearest sample: swscale's)."""
    return chroma.repeat_interleave(2, -2).repeat_interleave(2, -1)[..., :height, :width]


def conversion_for(pix_fmt: str, colorspace: int, color_range: int, height: int) -> YuvToRgb:
    """The exact conversion of a frame with these tags (what PyAVReader's reformat reads: the frame's
    own colorspace and range; yuvj formats are full range), or UnsupportedPixels saying why not."""
    if pix_fmt not in PLANE_LAYOUTS:
        raise UnsupportedPixels(f"pixel format {pix_fmt} (only 8-bit 4:2:0: {', '.join(PLANE_LAYOUTS)})")
    if height % 2:
        raise UnsupportedPixels(f"odd frame height {height} (swscale scales such frames instead)")
    return _conversion(colorspace, pix_fmt.startswith("yuvj") or color_range == AVCOL_RANGE_JPEG)


@lru_cache(maxsize=None)
def _conversion(colorspace: int, full_range: bool) -> YuvToRgb:
    return YuvToRgb.of(colorspace, full_range)


COEF_BITS = 11  # OpenCV's INTER_RESIZE_COEF_BITS
_ONE = np.float32(1 << COEF_BITS)


@lru_cache(maxsize=64)
def linear_taps(src: int, dst: int, clamp_edges: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV's INTER_LINEAR taps from `src` to `dst` samples: first and second source index and their
    11-bit weights (int64 arrays of `dst`). Columns (`clamp_edges`) take the edge sample whole beyond
    either edge; rows keep their fraction and repeat the edge row, as cv::resize does."""
    scale = 1.0 / (dst / src)  # cv::resize's 1/inv_scale, in double
    fraction = ((np.arange(dst) + 0.5) * scale - 0.5).astype(np.float32)
    first = np.floor(fraction).astype(np.int64)
    fraction = fraction - first.astype(np.float32)
    if clamp_edges:
        low, high = first < 0, first >= src - 1
        fraction = np.where(low | high, np.float32(0), fraction)
        first = np.where(low, 0, np.where(high, src - 1, first))
    w0 = np.rint((np.float32(1) - fraction) * _ONE).astype(np.int64)  # saturate_cast<short>: cvRound
    w1 = np.rint(fraction * _ONE).astype(np.int64)
    return np.clip(first, 0, src - 1), np.clip(first + 1, 0, src - 1), w0, w1


def resize_crop(frames: torch.Tensor, size: tuple[int, int], offset: tuple[int, int] = (0, 0),
                crop: Optional[tuple[int, int]] = None) -> torch.Tensor:
    """`cv2.resize(frame, (w, h), interpolation=INTER_LINEAR)[top:top+ch, left:left+cw]` of uint8
    frames (N, H, W, C) on their device, bit for bit, computing only the cropped window."""
    n, height, width, channels = frames.shape
    crop = crop or size
    (top, left), device = offset, frames.device
    if (height, width) == tuple(size):  # cv2.resize copies; the arithmetic below would give the same
        return frames[:, top: top + crop[0], left: left + crop[1]]
    x0, x1, a0, a1 = (torch.from_numpy(t[left: left + crop[1]]).to(device) for t in linear_taps(width, size[1], True))
    y0, y1, b0, b1 = (torch.from_numpy(t[top: top + crop[0]]).to(device) for t in linear_taps(height, size[0], False))
    a0, a1 = a0.to(torch.int32).view(1, 1, -1, 1), a1.to(torch.int32).view(1, 1, -1, 1)

    def rows(index: torch.Tensor) -> torch.Tensor:  # the horizontal pass of these source rows, >> 4
        picked = frames.index_select(1, index).to(torch.int32)
        return (picked.index_select(2, x0) * a0 + picked.index_select(2, x1) * a1) >> 4

    b0, b1 = b0.to(torch.int32).view(1, -1, 1, 1), b1.to(torch.int32).view(1, -1, 1, 1)
    out = (((rows(y0) * b0) >> 16) + ((rows(y1) * b1) >> 16) + 2) >> 2
    return out.clamp_(0, 255).to(torch.uint8)


def yuv_resize_crop(conversion: YuvToRgb, y: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                    size: tuple[int, int], offset: tuple[int, int] = (0, 0),
                    crop: Optional[tuple[int, int]] = None) -> torch.Tensor:
    """`resize_crop(conversion.planar(y, u, v), size, offset, crop)` without converting the whole
    frame: (N, H, W) luma and (N, ceil(H/2), ceil(W/2)) chroma (views of NV12's interleaved plane do)
    -> (N, ch, cw, 3) uint8, converting only the samples the cropped window's taps read (the
    conversion is per sample, so the result is the same bit for bit; of a 1080p frame, ~3%)."""
    height, width = y.shape[-2:]
    if height % 2:
        raise UnsupportedPixels(f"odd frame height {height} (swscale scales such frames instead)")
    crop, (top, left), device = crop or size, offset, y.device
    x0, x1, a0, a1 = (torch.from_numpy(t[left: left + crop[1]]).to(device) for t in linear_taps(width, size[1], True))
    y0, y1, b0, b1 = (torch.from_numpy(t[top: top + crop[0]]).to(device) for t in linear_taps(height, size[0], False))
    a0, a1 = a0.to(torch.int32).view(1, 1, -1, 1), a1.to(torch.int32).view(1, 1, -1, 1)

    def rows(index: torch.Tensor) -> torch.Tensor:  # the horizontal pass of these rows' rgb, >> 4
        luma, cb, cr = y.index_select(1, index), u.index_select(1, index // 2), v.index_select(1, index // 2)

        def rgb(columns: torch.Tensor) -> torch.Tensor:
            half = columns // 2
            return conversion.points(luma.index_select(2, columns), cb.index_select(2, half), cr.index_select(2, half))

        return (rgb(x0) * a0 + rgb(x1) * a1) >> 4

    b0, b1 = b0.to(torch.int32).view(1, -1, 1, 1), b1.to(torch.int32).view(1, -1, 1, 1)
    out = (((rows(y0) * b0) >> 16) + ((rows(y1) * b1) >> 16) + 2) >> 2
    return out.clamp_(0, 255).to(torch.uint8)


def resize_frames(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`cv2.resize(INTER_LINEAR)` of uint8 frames (N, H, W, C) to `size` (h, w) on their device."""
    return resize_crop(frames, size)
