"""Stable train/validation assignment of documents by a hash of their identity."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import Any

VALIDATION_FRACTION = 0.03


def hash_fraction(key: str) -> float:
  """A stable number in [0, 1) from a string, for deterministic splits and choices."""
  digest = hashlib.sha256(key.encode('utf-8')).digest()
  return int.from_bytes(digest[:8], 'big') / 2**64


def in_validation(key: str, fraction: float = VALIDATION_FRACTION) -> bool:
  """Whether the document keyed `key` belongs to the validation split."""
  return hash_fraction(key) < fraction


def split_assigned(items: Iterator[tuple[str, str, Any]], fraction: float, what: str,
                   fix: str, by: Callable[[tuple[str, str, Any]], str] | None = None
                   ) -> dict[str, list]:
  """Splits (key, text, extra) items into train/validation by hash of `by(item)` (default the
  key), neither empty; items that share a `by` value share a split.

  A small corpus may hash nothing below `fraction`; then its lowest-hash document goes to
  validation, so the choice stays a deterministic function of the keys.
  """
  items = list(items)
  if len(items) < 2:
    raise ValueError(f'{what} has {len(items)} non-empty document(s); at least 2 are needed to '
                     f'carve a validation split: {fix}.')
  names = [(by or (lambda item: item[0]))(item) for item in items]
  hashed = [(hash_fraction(name), name) for name in names]
  chosen = {name for value, name in hashed if value < fraction} or {min(hashed)[1]}
  split = {'train': [item for item, name in zip(items, names) if name not in chosen],
           'validation': [item for item, name in zip(items, names) if name in chosen]}
  if not split['train']:
    raise ValueError(f'{what} holds copies of one document only: {fix}.')
  return split
