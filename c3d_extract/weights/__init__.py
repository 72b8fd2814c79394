"""Weights: the manifest, downloads, Caffe readers, conversion, loading."""
