"""Data formats, one file each, found by name in `registry` (see data/formats/base.py)."""

from data.formats import chunks, packed, pairs  # noqa: F401  (registers them)
from data.formats.registry import defaults, get, names, register  # noqa: F401
