"""The one L2 normalisation: of a video's mean, of segment means, of rows before an SVM."""

from __future__ import annotations

import numpy as np


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """`x` divided by its L2 norm along the last axis (each row of a matrix, or the vector); an
    all-zero row stays zero (it has no direction)."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms > 0, norms, 1)
