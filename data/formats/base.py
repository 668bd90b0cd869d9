"""What a data format is: documents in, fixed-shape examples out, plus the spec for tracing.

A format class is built with `(vocab, seq_len, settings)` and provides
- `name`, `unit` ('document': whole documents' ids; 'sentences': each sentence's ids),
- `spec(batch_size, seq_len)`: example names -> (shape, dtype), what `example_batch` fills,
- `builder(seed, process_index)`: a fresh `Builder`, which turns documents into examples.

A `Builder` only makes examples; the shared reader (data/reader.py) decides which document
comes next, shards, shuffles and saves the position. Its state must be JSON-serialisable.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

Example = dict[str, np.ndarray]
Spec = dict[str, tuple[tuple[int, ...], Any]]


class Builder(Protocol):
  stats: dict[str, Any]

  def ready(self) -> int:
    """How many complete examples can be taken now."""

  def add(self, index: int, documents: Any, reader: Any) -> None:
    """Reads document `index` (through the tokenized view `documents`) into pending examples."""

  def take(self) -> Example:
    """The next complete example."""

  def end_of_pass(self, final: bool) -> None:
    """Called when a pass over the shard ends; `final` when no pass follows (flush)."""

  def get_state(self) -> dict[str, Any]:
    ...

  def set_state(self, state: dict[str, Any]) -> None:
    ...


def token_spec(batch_size: int, seq_len: int) -> Spec:
  """The three arrays every format gives: tokens, segment ids (0 = padding) and positions."""
  return {name: ((batch_size, seq_len), np.int32)
          for name in ('tokens', 'segment_ids', 'positions')}


def padding_example(spec: Spec, pad_id: int) -> Example:
  """One all-padding example of `spec` (batch dimension dropped): segment ids 0, tokens pad."""
  example = {name: np.zeros(shape[1:], dtype) for name, (shape, dtype) in spec.items()}
  example['tokens'][...] = pad_id
  return example
