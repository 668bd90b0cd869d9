"""The objective contract: what every loss provides to the trainer.

An objective is a frozen dataclass with
  - `data_format`: the host examples it needs ('packed' windows or 'sentence_pairs'),
  - `model_overrides()`: model features it needs (a pooler head, the query stream),
  - `prepare(rng, batch, inputs) -> (inputs, targets)`: pure and jit-able; it edits
    the model inputs (masking, attention order, which positions get logits). `inputs` are
    what the objectives before it produced, starting from `base_inputs(batch)`; the weighted
    objective the registry builds has the same signature with `inputs=None` meaning that start,
  - `loss(outputs, targets) -> (loss, metrics)`: pure and jit-able; metrics map a
    name to a (total, count) pair so they reduce exactly over devices and steps.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Protocol

import jax
import jax.numpy as jnp
import optax

from models.transformer import ModelInputs, ModelOutputs

Array = jax.Array
Batch = Mapping[str, Array]
Metrics = dict[str, tuple[Array, Array]]

# 'any' means the objective works on whatever its partners read (MLM on windows or pairs).
DATA_FORMATS = ('packed', 'sentence_pairs', 'sentence_order_pairs', 'any')


class Objective(Protocol):
  """What the trainer needs of a loss; see the module docstring."""

  data_format: str

  def model_overrides(self) -> dict[str, Any]:
    ...

  def prepare(self, rng: Array, batch: Batch, inputs: ModelInputs) -> tuple[ModelInputs, Any]:
    ...

  def loss(self, outputs: ModelOutputs, targets: Any) -> tuple[Array, Metrics]:
    ...


def with_defaults(name: str, settings: Mapping[str, Any] | None,
                  defaults: Mapping[str, Any]) -> dict[str, Any]:
  """`config.<name>` over its registered defaults; an unknown key is a one-line error."""
  given = dict(settings) if settings else {}
  unknown = sorted(set(given) - set(defaults))
  if unknown:
    raise ValueError(f'Unknown setting config.{name}.{unknown[0]}: known settings are '
                     f'{sorted(defaults)}.')
  return {**defaults, **given}


def base_inputs(batch: Batch) -> ModelInputs:
  """Model inputs straight from a host batch: bidirectional attention, logits everywhere."""
  return ModelInputs(
      tokens=batch['tokens'], positions=batch['positions'], segment_ids=batch['segment_ids'],
      token_types=batch.get('token_types'), lengths=batch.get('lengths'))


def prediction_candidates(tokens: Array, segment_ids: Array, is_special: Array,
                          is_whitespace: Array | None = None) -> Array:
  """True on real (non-padding), non-special tokens, and not whitespace-only pieces when
  `is_whitespace` is given: the only positions a token-prediction loss may choose."""
  candidates = (segment_ids > 0) & ~is_special[tokens]
  return candidates if is_whitespace is None else candidates & ~is_whitespace[tokens]


def token_cross_entropy(logits: Array, targets: Array, weights: Array) -> tuple[Array, Metrics]:
  """Cross-entropy averaged over the weighted targets, with loss/accuracy/count metrics.

  logits [..., vocab] float32, targets [...] int, weights [...] in {0, 1}. The loss is
  normalised by the number of targets (never by the padded length); positions of
  weight 0 get exactly zero gradient.
  """
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  return scored_cross_entropy(losses, jnp.argmax(logits, axis=-1) == targets, weights)


def scored_cross_entropy(nll: Array, correct: Array, weights: Array) -> tuple[Array, Metrics]:
  """token_cross_entropy from per-target scores: -log p(target) and target == argmax (what
  the model returns for `ModelInputs.labels`, without the logits)."""
  weights = weights.astype(jnp.float32)
  losses = jnp.where(weights > 0, nll, 0.0)
  count = weights.sum()
  total = (losses * weights).sum()
  correct = (correct * weights).sum()
  loss = total / jnp.maximum(count, 1.0)
  return loss, {'loss': (total, count), 'accuracy': (correct, count),
                'predictions': (count, jnp.ones_like(count))}


def token_loss(outputs: Any, targets: Mapping[str, Array]) -> tuple[Array, Metrics]:
  """The token cross-entropy of `targets` from the logits, or from the model's own scores
  of `ModelInputs.labels` when the objective asked for those instead."""
  if getattr(outputs, 'token_nll', None) is not None:
    return scored_cross_entropy(outputs.token_nll, outputs.token_correct, targets['weights'])
  return token_cross_entropy(outputs.logits, targets['targets'], targets['weights'])


def metric_value(total: Any, count: Any) -> float:
  """A (total, count) metric as the number to report."""
  return float(total) / max(float(count), 1e-12)


@dataclasses.dataclass(frozen=True)
class WeightedObjectives:
  """Several objectives sharing one forward pass, their losses summed with weights (BERT: mlm + nsp).

  Each part's prepare() sees the inputs the parts before it produced, so MLM can mask the
  tokens while NSP only adds its targets. Metrics are prefixed with the part's name.
  """

  parts: tuple[tuple[str, float, Any], ...]

  def __post_init__(self):
    formats = {part.data_format for _, _, part in self.parts} - {'any'}
    if len(formats) > 1:
      names = ', '.join(f'{name}: {part.data_format}' for name, _, part in self.parts)
      raise ValueError(f'config.objective mixes data formats ({names}); combine only objectives '
                       'that read the same examples.')

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(name for name, _, _ in self.parts)

  @property
  def data_format(self) -> str:
    formats = {part.data_format for _, _, part in self.parts} - {'any'}
    return formats.pop() if formats else 'packed'

  def model_overrides(self) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for name, _, part in self.parts:
      for key, value in part.model_overrides().items():
        if key in merged and merged[key] != value:
          raise ValueError(f'Objective {name} needs config.model.{key}={value!r} but another '
                           f'objective needs {merged[key]!r}.')
        merged[key] = value
    return merged

  def prepare(self, rng: Array, batch: Batch,
              inputs: ModelInputs | None = None) -> tuple[ModelInputs, tuple[Any, ...]]:
    inputs = base_inputs(batch) if inputs is None else inputs
    targets = []
    for index, (_, _, part) in enumerate(self.parts):
      inputs, part_targets = part.prepare(jax.random.fold_in(rng, index), batch, inputs)
      targets.append(part_targets)
    return inputs, tuple(targets)

  def loss(self, outputs: ModelOutputs, targets: tuple[Any, ...]) -> tuple[Array, Metrics]:
    total = jnp.zeros((), jnp.float32)
    metrics: Metrics = {}
    for (name, weight, part), part_targets in zip(self.parts, targets):
      part_loss, part_metrics = part.loss(outputs, part_targets)
      total = total + weight * part_loss
      metrics.update({f'{name}_{key}': value for key, value in part_metrics.items()})
    if len(self.parts) == 1:
      metrics['loss'] = metrics[f'{self.parts[0][0]}_loss']  # token-weighted, like the part's
    else:
      metrics['loss'] = (total, jnp.ones((), jnp.float32))
    return total, metrics
