"""The model registry: `--model` names and the specs they select."""

from __future__ import annotations

from c3d_extract.models.c3d import C3D_SPORTS1M, c3d
from c3d_extract.models.res3d import RES3D_SPORTS1M, res3d
from c3d_extract.models.spec import ModelSpec

MODELS: dict[str, ModelSpec] = {"c3d": C3D_SPORTS1M, "res3d": RES3D_SPORTS1M}


def get_spec(name: str) -> ModelSpec:
    """The spec for a `--model` name (or a spec name such as "c3d-sports1m")."""
    for key, spec in MODELS.items():
        if name in (key, spec.name):
            return spec
    raise KeyError(f"unknown model {name!r}; known: {', '.join(MODELS)}")


__all__ = ["MODELS", "ModelSpec", "get_spec", "c3d", "res3d", "C3D_SPORTS1M", "RES3D_SPORTS1M"]
