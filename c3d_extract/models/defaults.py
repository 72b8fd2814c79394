"""Each spec's default feature layers, by spec name, in a module without torch: the specs
(c3d.py, res3d.py, densenet3d.py) take theirs from here, and reading a feature file
(featurefile/reader.py, `c3d-svm`) knows them without importing the networks."""

DEFAULT_LAYERS: dict[str, tuple[str, ...]] = {
    "c3d-sports1m": ("fc6",),
    "res3d-sports1m": ("res5b",),
    "r3d18-kinetics400": ("pool5",),
    # DenseNet3D and T3D, at 32 x 224 and as their 16 x 112 variants
    **{name + size: ("pool5",)
       for name in ("densenet3d-121", "t3d-121", "t3d-169") for size in ("", "-16x112")},
}
