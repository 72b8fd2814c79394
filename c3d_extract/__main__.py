"""`python -m c3d_extract` is the same as `c3d-extract`."""

from c3d_extract.cli import extract_main

if __name__ == "__main__":
    extract_main()
