"""The model registry: `--model` names and the specs they select (importing it imports torch)."""

from __future__ import annotations

from c3d_extract.errors import UsageError
from c3d_extract.models.c3d import C3D_SPORTS1M, c3d
from c3d_extract.models.densenet3d import DENSENET3D_121, SMALL, T3D_121, T3D_169, densenet3d
from c3d_extract.models.res3d import R3D18_KINETICS400, RES3D_SPORTS1M, r3d_18, res3d
from c3d_extract.models.inputs import FAMILY_SPECS, MODEL_NAMES
from c3d_extract.models.spec import ModelSpec

# every spec, by name: the same networks with other weights and their own preprocessing
SPECS: dict[str, ModelSpec] = {s.name: s for s in (C3D_SPORTS1M, RES3D_SPORTS1M, R3D18_KINETICS400,
                                                   DENSENET3D_121, T3D_121, T3D_169, *SMALL)}
# `--model` names: a network family and the spec it means by default (models/inputs.py, without torch)
MODELS: dict[str, ModelSpec] = {family: SPECS[name] for family, name in FAMILY_SPECS.items()}


def get_spec(name: str) -> ModelSpec:
    """The spec for a `--model` name ("c3d", "res3d") or a spec name ("r3d18-kinetics400")."""
    spec = MODELS.get(name) or SPECS.get(name)
    if spec is None:
        raise UsageError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}")
    return spec


__all__ = ["MODELS", "SPECS", "ModelSpec", "get_spec", "c3d", "res3d", "r3d_18", "densenet3d",
           "C3D_SPORTS1M", "RES3D_SPORTS1M", "R3D18_KINETICS400"]
