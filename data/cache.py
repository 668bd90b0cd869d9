"""Where this package caches what it builds: corpora, tokenizers and pre-tokenized shards."""

from __future__ import annotations

import os

CACHE_ENV = 'PRETRAINING_OBJECTIVES_CACHE'
DEFAULT_CACHE_ROOT = '~/.cache/pretraining-objectives'


def cache_root() -> str:
  """Root of every cache this package writes: `$PRETRAINING_OBJECTIVES_CACHE` or ~/.cache/..."""
  return os.path.expanduser(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_ROOT)
