"""Host tokens/s per CPU second of a batch iterator, and what a device consumes (no flags: the
benchmarks and tests share it)."""

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


HEADROOM = 3.0  # host tokens/s per core over what the device consumes, for a pipeline that keeps up


def parse_consumes(entries: list[str]) -> dict[tuple[str, int], float]:
  """{(format, seq_len): device tokens/s} of FORMAT:SEQ=TOKENS_PER_SEC entries; a malformed
  one is a one-line ValueError."""
  rates = {}
  for entry in entries:
    try:
      key, rate = entry.split('=')
      name, seq_len = key.split(':')
      rates[(name, int(seq_len))] = float(rate)
    except ValueError:
      raise ValueError(f'--consumes={entry!r} is not FORMAT:SEQ=TOKENS_PER_SEC, e.g. '
                       'packed:1024=600000.') from None
  return rates
