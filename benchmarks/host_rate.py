"""Host tokens/s per CPU second of a batch iterator (no flags: the benchmarks share it)."""

from __future__ import annotations

import time
from typing import Any


def host_rate(iterator: Any, batches: int) -> dict[str, float]:
  """Tokens (all positions) and real tokens (segment_ids > 0) per CPU second over `batches`
  batches, after one untimed warm-up batch."""
  next(iterator)
  start = time.process_time()
  tokens = real = 0
  for _ in range(batches):
    batch = next(iterator)
    tokens += batch['tokens'].size
    real += int((batch['segment_ids'] > 0).sum())
  seconds = time.process_time() - start
  return {'tokens_per_sec': tokens / seconds, 'real_tokens_per_sec': real / seconds}
