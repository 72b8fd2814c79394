"""The networks and their specs: `net.py` (the staged network), `c3d.py`, `res3d.py`, `densenet3d.py`
(each with its specs), `spec.py`, `defaults.py` (each spec's default layers, no torch),
`preprocess.py` (InputSpec: clip geometry and pixels, no torch at import: decoder processes use it),
`registry.py` (`--model` names)."""
