"""Output heads that objectives own and attach to the shared Transformer.

An objective whose loss needs a head of its own defines it in its own file and attaches it
here when that file is imported; `ModelConfig` says when the model runs it (the switch below,
set by the objective's `model_overrides()`). Two slots: NSP/SOP's pooler and classifier
(objectives/nsp.py, for `num_sentence_classes > 0`) and SpanBERT's span-boundary head
(objectives/mlm.py, for `sbo_max_offset > 0`). The model calls a head inside its own Flax
scope, so the modules the head makes sit directly under the model's parameters
(`params/pooler`, `params/sentence_classifier`, `params/span_boundary`): the paths the
checkpoints of every run have. Building the objective imports its file (objectives/registry.py),
so the head is attached before any model that needs it is built.
"""

from __future__ import annotations

from typing import Callable

import jax


# (model config, final hidden states [B, T, D]) -> sentence logits [B, classes] in float32.
SENTENCE = 'sentence'
# (model config, final hidden states [B, T, D], span boundaries [B, P, 3]) -> states [B, P, D],
# which the model sends through its own output layer beside the masked positions' states.
SPAN_BOUNDARY = 'span_boundary'
_SWITCHES = {SENTENCE: 'num_sentence_classes', SPAN_BOUNDARY: 'sbo_max_offset'}
_OWNERS = {SENTENCE: 'objectives/nsp.py', SPAN_BOUNDARY: 'objectives/mlm.py'}
_HEADS: dict[str, Callable[..., jax.Array]] = {}


def attach(slot: str, head: Callable[..., jax.Array]) -> None:
  """Makes `head` the model's head for `slot` (SENTENCE or SPAN_BOUNDARY)."""
  if slot not in _SWITCHES:
    raise ValueError(f'No head slot {slot!r}: the model has {sorted(_SWITCHES)}.')
  _HEADS[slot] = head


def get(slot: str) -> Callable[..., jax.Array]:
  """The head attached for `slot`; a one-line error when no objective has attached one."""
  if slot not in _HEADS:
    owner = _OWNERS[slot]
    raise ValueError(f'config.model.{_SWITCHES[slot]} > 0 needs the {slot} head, which '
                     f'{owner} attaches when imported: build the objective '
                     f'(objectives.registry.build) or import {owner[:-3].replace("/", ".")} first.')
  return _HEADS[slot]
