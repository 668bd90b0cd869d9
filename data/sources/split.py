"""Stable train/validation assignment of documents by a hash of their identity."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

VALIDATION_FRACTION = 0.03


def hash_fraction(key: str) -> float:
  digest = hashlib.sha256(key.encode('utf-8')).digest()
  return int.from_bytes(digest[:8], 'big') / 2**64


def in_validation(key: str, fraction: float = VALIDATION_FRACTION) -> bool:
  """Whether the document keyed `key` belongs to the validation split."""
  return hash_fraction(key) < fraction


def split_assigned(items: Iterator[tuple[str, str, Any]], fraction: float, what: str,
                   fix: str) -> dict[str, list]:
  """Splits (key, text, extra) items into train/validation by hash of the key, neither empty.

  A small corpus may hash nothing below `fraction`; then its lowest-hash document goes to
  validation, so the choice stays a deterministic function of the keys.
  """
  items = [(hash_fraction(item[0]), *item) for item in items]
  if len(items) < 2:
    raise ValueError(f'{what} has {len(items)} non-empty document(s); at least 2 are needed to '
                     f'carve a validation split: {fix}.')
  validation = [item for item in items if item[0] < fraction] or [min(items)]
  chosen = {item[1] for item in validation}
  train = [item for item in items if item[1] not in chosen]
  return {'train': [item[1:] for item in train], 'validation': [item[1:] for item in validation]}
