"""Former home of the corpora, kept so older imports work; see data/sources/ for the sources.

`load_documents(config.data, split)` reads `config.data.source` through the source registry.
"""

from __future__ import annotations

from data.cache import CACHE_ENV, DEFAULT_CACHE_ROOT, cache_root  # noqa: F401
from data.cleaning import (clean_text, cleaning_notes, decode_utf8,  # noqa: F401
                           describe_cleaning, split_stats)
from data.sources import load_documents  # noqa: F401
from data.sources.builtin import file_docstrings, stdlib_files  # noqa: F401
from data.sources.documents import DocumentSource  # noqa: F401
from data.sources.split import VALIDATION_FRACTION, in_validation  # noqa: F401
from data.sources.text import read_local_documents, resolve_globs  # noqa: F401

SPLITS = ('train', 'validation')


def data_dir_for(data_config) -> str:
  """The tfds data_dir: `config.data.data_dir`, or `<cache root>/tfds` when empty."""
  from data.sources import store  # pylint: disable=import-outside-toplevel

  return store.data_dir_for(data_config)
