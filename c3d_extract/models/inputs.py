"""Each spec's input (clip windows, resize, crop, channels, mean), by spec name, and each `--model`
family's default spec, in a module without torch (as defaults.py holds their default layers): the
specs (c3d.py, res3d.py, densenet3d.py) take their InputSpec from here, and a run hands its decoder
processes their first jobs from it before the parent has imported torch (extraction/early.py)."""

from __future__ import annotations

from c3d_extract.errors import UsageError
from c3d_extract.models.preprocess import InputSpec


def _densenet_input(small: bool) -> InputSpec:
    """DenseNet3D / T3D (Diba et al. 2017): 32 frames at 224 (or their 16 x 112 variant)."""
    frames, side = (16, 112) if small else (32, 224)
    return InputSpec(
        # 32 frames taken every 2nd frame (Table 6's best sampling rate): a 64-frame window;
        # non-overlapping windows, as the paper's testing ("non-overlapping clips").
        clip_len=2 * frames, stride=2 * frames, frame_step=2,
        resize=None, short_side=256 if not small else 128, crop=(side, side), crop_offset=None,
        channels="RGB", value_scale=1.0, mean=(123.675, 116.28, 103.53),
        mean_note="choice: the paper says only 'mean-subtracted'; ImageNet's RGB mean in 0..255",
    )


INPUTS: dict[str, InputSpec] = {
    "c3d-sports1m": InputSpec(
        clip_len=16, stride=8, frame_step=1,
        resize=(128, 171), crop=(112, 112), crop_offset=(8, 29),
        channels="BGR", value_scale=1.0,
        # The Sports-1M mean cube is not public any more; these are the per-channel values of the
        # UCF101 train01 cube shipped with C3D (reference/peers.md 1.1). An approximation: say so.
        mean=(90.2516, 97.6570, 101.4083),
        mean_note="approximation: per-channel mean of C3D's UCF101 train01 mean cube, "
                  "not the Sports-1M cube",
    ),
    "res3d-sports1m": InputSpec(
        clip_len=16, stride=8, frame_step=2,
        resize=(128, 171), crop=(112, 112), crop_offset=(8, 29),
        channels="BGR", value_scale=1.0,
        mean=(128.0, 128.0, 128.0),
        mean_note="exact: mean_value 128 of the C3D v1.1 Res3D prototxt",
    ),
    "r3d18-kinetics400": InputSpec(
        # torchvision's VideoClassification preset: RGB in [0, 1], Kinetics mean/std, 16 consecutive
        # frames, resize 128x171 (bilinear, no antialias), centre crop 112. Its crop rounds
        # (171 - 112) / 2 = 29.5 to 30 (Python's round), where Caffe's integer division gives 29.
        clip_len=16, stride=8, frame_step=1,
        resize=(128, 171), crop=(112, 112), crop_offset=(8, 30),
        channels="RGB", value_scale=1 / 255,
        mean=(0.43216, 0.394666, 0.37645), std=(0.22803, 0.22145, 0.216989),
        mean_note="exact: torchvision R3D_18_Weights.KINETICS400_V1 normalisation",
    ),
    **{name: _densenet_input(small=False) for name in ("densenet3d-121", "t3d-121", "t3d-169")},
    **{name + "-16x112": _densenet_input(small=True) for name in ("densenet3d-121", "t3d-121", "t3d-169")},
}

# `--model` family -> the spec it means by default (models/registry.py builds MODELS from it)
FAMILY_SPECS: dict[str, str] = {"c3d": "c3d-sports1m", "res3d": "res3d-sports1m",
                                "densenet3d-121": "densenet3d-121", "t3d-121": "t3d-121", "t3d-169": "t3d-169"}

# what `--model` accepts: the family names, then every spec name not already among them
MODEL_NAMES = list(dict.fromkeys([*FAMILY_SPECS, *INPUTS]))


def input_of(name: str) -> InputSpec:
    """The InputSpec for a `--model` name ("c3d", "res3d") or a spec name ("r3d18-kinetics400")."""
    spec_name = FAMILY_SPECS.get(name, name)
    if spec_name not in INPUTS:
        raise UsageError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}")
    return INPUTS[spec_name]
