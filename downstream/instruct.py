"""Instruction fine-tuning of a causal checkpoint: causal-LM loss on the response tokens of
prompt/response pairs only (the prompt is context, never a target), with any strategy that
trains backbone parameters, adapters or soft prompts (full, ffn_only, lora, prompt_tuning).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import numpy as np

from downstream import encoding, finetune, strategies
from downstream.model import DownstreamModel
from downstream.tasks import local
from objectives.base import token_cross_entropy


def read_pairs(path: str, setting: str, prompt_field: str = 'prompt',
               response_field: str = 'response') -> list[dict[str, str]]:
  """{'prompt', 'response'} records of a JSONL file."""
  pairs = []
  for number, record in enumerate(local.read_records(path, setting), 1):
    for field in (prompt_field, response_field):
      if not isinstance(record.get(field), str):
        raise ValueError(f'{path}: record {number} has no string field {field!r}: set '
                         'config.instruct.prompt_field / response_field.')
    pairs.append({'prompt': record[prompt_field], 'response': record[response_field]})
  if not pairs:
    raise ValueError(f'{setting}={path} holds no prompt/response pairs.')
  return pairs


def response_loss(model: DownstreamModel, params: Any, batch: dict[str, Any], *, train: bool,
                  rng: jax.Array):
  """(mean cross-entropy over response tokens, metrics as (total, count) pairs)."""
  outputs = model.outputs(params, batch, train=train, rng=rng, logits=True)
  return token_cross_entropy(outputs.logits, batch['targets'], batch['weights'])


@dataclasses.dataclass
class InstructResult:
  scores: dict[str, float]  # response-token loss and accuracy on the validation pairs
  trained_params: int
  steps: int
  examples_per_sec: float
  params: Any = None


def train_and_evaluate(model: DownstreamModel, strategy: strategies.Strategy, backbone: Any,
                       tokenizer, train_pairs: Sequence[dict[str, str]],
                       validation_pairs: Sequence[dict[str, str]],
                       settings: finetune.TrainSettings, *, seq_len: int,
                       keep_params: bool = False) -> InstructResult:
  """Tunes on the response tokens with fine-tuning's recipe (`settings`: warmup, decay,
  clipping, max_steps) and scores the validation pairs' response tokens."""
  if strategy.name == 'linear_probe':
    raise ValueError('config.strategy=linear_probe trains only a task head, and instruction '
                     'tuning has none: choose full, ffn_only, lora or prompt_tuning.')
  if not model.causal:
    raise ValueError('Instruction tuning needs a causal (clm) checkpoint.')
  train = encoding.encode_instructions(tokenizer, train_pairs, seq_len, tokenizer.vocab)
  validation = encoding.encode_instructions(tokenizer, validation_pairs, seq_len, tokenizer.vocab)
  key = jax.random.key(settings.seed)
  params = strategy.add_params(key, {'backbone': backbone}, tokenizer.vocab.ordinary_ids)
  labels = strategy.labels(params)
  batch_size, steps = finetune.planned_steps(settings, len(train['tokens']))
  tx = finetune.make_optimizer(settings, labels, steps)
  train_step = finetune.make_train_step(
      lambda p, batch, rng: response_loss(model, p, batch, train=True, rng=rng)[0], tx, labels,
      settings.seed)
  params, step, examples_per_sec = finetune.run_steps(
      train_step, params, tx.init(params), train, batch_size, steps,
      np.random.default_rng(settings.seed))
  evaluate = jax.jit(lambda p, b: response_loss(model, p, b, train=False, rng=key)[1])
  totals: dict[str, list[float]] = {}
  for begin in range(0, len(validation['tokens']), batch_size):
    batch = {k: v[begin:begin + batch_size] for k, v in validation.items()}
    for name, (total, count) in evaluate(params, batch).items():
      sums = totals.setdefault(name, [0.0, 0.0])
      sums[0] += float(total)
      sums[1] += float(count)
  scores = {f'response_{name}': total / max(count, 1e-12)
            for name, (total, count) in totals.items() if name in ('loss', 'accuracy')}
  return InstructResult(scores=scores, trained_params=strategies.trained_count(params, labels),
                        steps=step, examples_per_sec=examples_per_sec,
                        params=params if keep_params else None)
