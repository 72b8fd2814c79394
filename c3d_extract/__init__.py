"""c3d_extract: C3D and Res3D video descriptors, extracted faithfully and evaluated like the papers."""

__version__ = "0.1.0"
