"""Data formats, one file each, found by name in `registry` (see data/formats/base.py); the
first lookup imports every format module of the folder."""

from data.formats.registry import defaults, get, names, register  # noqa: F401
