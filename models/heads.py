"""Output heads that objectives own and attach to the shared Transformer.

An objective whose loss needs a head of its own (NSP/SOP's pooler and classifier) defines it
in its own file and attaches it here when that file is imported; `ModelConfig` says when the
model runs it (`num_sentence_classes > 0`, set by the objective's `model_overrides()`). The
model calls a head inside its own Flax scope, so the modules the head makes sit directly under
the model's parameters (`params/pooler`, `params/sentence_classifier`): the paths the
checkpoints of every run have. Building the objective imports its file (objectives/registry.py),
so the head is attached before any model that needs it is built.
"""

from __future__ import annotations

from typing import Callable

import jax

from models.config import ModelConfig

# (model config, final hidden states [B, T, D]) -> sentence logits [B, classes] in float32.
SENTENCE = 'sentence'
_SWITCHES = {SENTENCE: 'num_sentence_classes'}
_HEADS: dict[str, Callable[[ModelConfig, jax.Array], jax.Array]] = {}


def attach(slot: str, head: Callable[[ModelConfig, jax.Array], jax.Array]) -> None:
  """Makes `head` the model's head for `slot` (one of SENTENCE)."""
  if slot not in _SWITCHES:
    raise ValueError(f'No head slot {slot!r}: the model has {sorted(_SWITCHES)}.')
  _HEADS[slot] = head


def get(slot: str) -> Callable[[ModelConfig, jax.Array], jax.Array]:
  """The head attached for `slot`; a one-line error when no objective has attached one."""
  if slot not in _HEADS:
    raise ValueError(f'config.model.{_SWITCHES[slot]} > 0 needs the {slot} head, which '
                     'objectives/nsp.py attaches when imported: build the objective '
                     '(objectives.registry.build) or import objectives.nsp first.')
  return _HEADS[slot]
