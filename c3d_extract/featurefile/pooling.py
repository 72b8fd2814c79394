"""Temporal pooling of a video's clip features into K segments (UCF-Crime, Sultani et al. CVPR 2018).

Exactly the released MATLAB (Save_C3DFeatures_32Segments.m): boundaries b = round(linspace(1, N, K+1))
with MATLAB's rounding (halves away from zero, not numpy's halves to even); segment k is the mean of
clips b_k .. b_{k+1} - 1 (1-based), or clip b_k alone when that range is empty (fewer clips than
segments); each segment is L2-normalised. As in that code, the last clip N is not part of the last
segment whenever b_K < N.
"""

from __future__ import annotations

import numpy as np

from c3d_extract.vectors import l2_normalize


def matlab_round(values: np.ndarray) -> np.ndarray:
    """Round halves away from zero, as MATLAB's round()."""
    return np.sign(values) * np.floor(np.abs(values) + 0.5)


def segment_bounds(num_clips: int, segments: int) -> list[tuple[int, int]]:
    """0-based [start, stop) clip ranges of each segment (stop = start + 1 for a lone clip)."""
    if num_clips < 1 or segments < 1:
        raise ValueError("segment pooling needs at least one clip and one segment")
    b = matlab_round(np.linspace(1, num_clips, segments + 1)).astype(int)
    out = []
    for k in range(segments):
        first, last = b[k], b[k + 1] - 1  # 1-based, inclusive
        out.append((first - 1, first) if last < first else (first - 1, last))
    return out


def segment_pool(clips: np.ndarray, segments: int) -> np.ndarray:
    """(N, D) clip features -> (K, D) L2-normalised segment means (a zero mean stays zero)."""
    clips = np.asarray(clips, dtype=np.float64)
    pooled = np.stack([clips[a:b].mean(axis=0) for a, b in segment_bounds(len(clips), segments)])
    return l2_normalize(pooled).astype(np.float32)
