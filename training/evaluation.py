"""Held-out evaluation that is the same for every arm: one exact, deterministic pass over a split.

`evaluate(exp, params, split)` reads every example of the split exactly once (the last batch
padded with empty rows that count for nothing), with a fixed eval PRNG independent of the
run's seed and step, keyed per example by a hash of its tokens (the same masks, pairs and
permutations every time, for every arm, whatever the batch size or device count), and
returns integer counts and metrics per objective:
  - token likelihoods (CLM, MLM, PLM, ...): `<name>_loss` (nats per prediction), `_accuracy`,
    `_perplexity`, `_bits_per_byte`, and the integer `_predictions` and `_bytes`;
  - sentence classification (NSP, SOP): `<name>_loss`, `_accuracy`, `_predictions`.
MLM is evaluated at a fixed 15% token masking (80/10/10) whatever the run trained with.
Bits per byte divide the nats of the predicted tokens by ln 2 times the UTF-8 bytes those
tokens spell (a piece's text with SentencePiece's word marker as a space; specials and
sentinels 0 bytes), so runs with different tokenizers compare. `evaluate_examples` also
returns the per-example numbers (for bootstrap intervals); `save_examples` writes them.
Nothing here writes by itself.
"""

from __future__ import annotations

import functools
import math
from typing import Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from training.step import step_rng

EVAL_SEED = 0  # the eval PRNG and pair construction never depend on the run's seed
EVAL_STREAM = 2  # PRNG stream of this evaluation (training uses 0, the loop's eval 1)
EXAMPLES_FILE = 'eval_examples.npz'


def token_bytes(tokenizer) -> np.ndarray:
  """UTF-8 bytes each id spells: byte pieces 1, specials/control/unknown 0, '▁' a space."""
  sp = tokenizer._sp  # pylint: disable=protected-access
  vocab = tokenizer.vocab
  sizes = np.zeros(vocab.size, np.int32)
  for index in range(vocab.size):
    if vocab.is_special[index] or sp.IsControl(index) or sp.IsUnknown(index):
      continue
    if sp.IsByte(index):
      sizes[index] = 1
    else:
      sizes[index] = len(sp.IdToPiece(index).replace('\u2581', ' ').encode('utf-8'))
  return sizes


def eval_objective(config, vocab):
  """The run's objective with each part's fixed evaluation settings: those its factory
  declares as `eval_settings` over config.<name> (MLM: 15% token masking, objectives/mlm.py)."""
  from objectives import registry  # pylint: disable=import-outside-toplevel

  def settings_of(name: str):
    settings = dict(config.get(name, {}) or {})
    settings.update(getattr(registry.get_factory(name), 'eval_settings', {}))
    return settings

  return registry.build(config.objective, settings_of, vocab=vocab, seq_len=config.seq_len)


def load_split(config, split: str):
  """The documents of `split`; a one-line error when the source has no such split."""
  from data import pipeline  # pylint: disable=import-outside-toplevel

  try:
    documents = pipeline.load_documents(config.data, split)
  except (ValueError, KeyError, FileNotFoundError) as error:
    first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
    raise ValueError(f'config.data.source={config.data.source!r} gives no {split!r} split: '
                     f'{first}') from error
  if len(documents) == 0:
    raise ValueError(f'The {split} split of config.data.source={config.data.source!r} is empty.')
  return documents


def _eval_config(config):
  """The run's config with the eval seed, so pair construction is the same for every run."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.seed = EVAL_SEED
  return config


def exact_batches(exp, split: str, documents) -> Iterator[dict[str, np.ndarray]]:
  """Every example of the split once (data/reader.py's exact pass), in batches of the run's
  local batch size; the last batches are padded with empty rows (segment ids 0), and every
  process yields as many batches. Pairs are built with the eval seed, not the run's."""
  from data import pipeline  # pylint: disable=import-outside-toplevel

  return pipeline.make_iterator(
      _eval_config(exp.config), exp.data_format, split, exp.tokenizer, documents,
      local_batch_size=exp.local_batch_size, process_index=jax.process_index(),
      process_count=jax.process_count(), exact_pass=True)


def _part_kind(outputs, targets) -> str:
  """'token' (a token likelihood), 'sentence' (a pair label) or '' (aggregate metrics only)."""
  if isinstance(targets, Mapping):
    if 'targets' in targets and 'weights' in targets:
      scores = outputs.token_nll if outputs.token_nll is not None else outputs.logits
      if scores is not None and scores.shape[:2] == targets['targets'].shape:
        return 'token'
    if 'labels' in targets and outputs.sentence_logits is not None:
      return 'sentence'
  return ''


def row_key(tokens: jax.Array) -> jax.Array:
  """A 32-bit hash of each row's tokens: equal keys mark the same example in two runs."""
  length = tokens.shape[1]
  multiplier = (jnp.arange(length, dtype=jnp.uint32) * jnp.uint32(2654435761) + jnp.uint32(1))
  return (tokens.astype(jnp.uint32) * multiplier).sum(axis=1, dtype=jnp.uint32)


def row_rng(key: jax.Array) -> jax.Array:
  """The eval PRNG key of one example: a function of its tokens' hash alone."""
  return jax.random.fold_in(step_rng(EVAL_SEED, 0, EVAL_STREAM), key)


def per_row(fn, *, keyed: bool = False):
  """`fn` applied to each row of its batched arguments on its own, as a batch of one (with
  `keyed`, the first argument is one PRNG key per row). What `fn` returns per batch comes
  back with a leading [B]: a scalar metric becomes one value per example."""

  def one(*args):
    args = [arg if keyed and i == 0 else jax.tree.map(lambda x: x[None], arg)
            for i, arg in enumerate(args)]
    return jax.tree.map(lambda x: x[0] if jnp.ndim(x) else x, fn(*args))

  return jax.vmap(one)


@functools.lru_cache(maxsize=8)
def _eval_fn(model_config, objective):
  """Jitted (params, batch, token_bytes) -> (per-row numbers, aggregate metrics)."""
  from models.transformer import Transformer  # pylint: disable=import-outside-toplevel
  from training.state import split_and_bind  # pylint: disable=import-outside-toplevel
  model = Transformer(model_config)

  def fn(params, batch, sizes):
    # Parameters an objective owns (ELECTRA's generator) sit beside the model's: split, bind.
    model_params, bound = split_and_bind(objective, params, model_config, train=False)
    keys = row_key(batch['tokens'])
    # Each example is prepared (masks, permutations, spans) with a key of its own tokens and
    # scored on its own, so its numbers never depend on the batch it sits in: the eval batch
    # size, the number of devices or processes and the example's place in the pass.
    inputs, targets = per_row(bound.prepare, keyed=True)(jax.vmap(row_rng)(keys), batch)
    outputs = model.apply({'params': model_params}, inputs, train=False)
    _, metrics = per_row(bound.loss)(outputs, targets)
    valid = (batch['segment_ids'] > 0).any(axis=1)
    # (total, count) per example; padding rows count for nothing.
    metrics = jax.tree.map(lambda x: jnp.where(valid, x, 0).sum(axis=0), metrics)
    rows = {'valid': valid, 'key': keys}
    for (name, _, _), part_targets in zip(objective.parts, targets):
      kind = _part_kind(outputs, part_targets)
      if kind == 'token':
        labels = part_targets['targets']
        weight = (part_targets['weights'] > 0) & valid[:, None]
        if outputs.token_nll is not None:  # scored inside the model, chunk by chunk
          nll, correct = outputs.token_nll, outputs.token_correct
        else:
          nll = optax.softmax_cross_entropy_with_integer_labels(
              outputs.logits.astype(jnp.float32), labels)
          correct = jnp.argmax(outputs.logits, axis=-1) == labels
        rows[f'{name}.nll'] = jnp.where(weight, nll, 0.0).sum(axis=1)
        rows[f'{name}.count'] = weight.sum(axis=1, dtype=jnp.int32)
        rows[f'{name}.correct'] = (correct & weight).sum(axis=1, dtype=jnp.int32)
        # Ids past the tokenizer's (sentinels) spell nothing: 0 bytes, like every special.
        size = jnp.take(sizes, labels, mode='fill', fill_value=0)
        rows[f'{name}.bytes'] = jnp.where(weight, size, 0).sum(axis=1, dtype=jnp.int32)
      elif kind == 'sentence':
        logits = outputs.sentence_logits.astype(jnp.float32)
        labels = part_targets['labels']
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        rows[f'{name}.nll'] = jnp.where(valid, nll, 0.0)
        rows[f'{name}.count'] = valid.astype(jnp.int32)
        rows[f'{name}.correct'] = ((jnp.argmax(logits, axis=-1) == labels) & valid).astype(
            jnp.int32)
    return rows, metrics

  return jax.jit(fn)


def _to_host(tree):
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)


def evaluate_examples(exp, params, split: str = 'validation', *,
                      documents=None) -> tuple[dict[str, float], dict[str, np.ndarray]]:
  """(metrics, per-example arrays) of one exact pass; see the module docstring.

  Per-example arrays hold one entry per real example in pass order: `key` (a hash of its
  tokens) and, per objective part, `<name>.nll`, `.count`, `.correct` (and `.bytes` for
  token likelihoods).
  """
  import flax.linen as nn  # pylint: disable=import-outside-toplevel

  from training import mesh as mesh_lib  # pylint: disable=import-outside-toplevel

  config = exp.config
  documents = load_split(config, split) if documents is None else documents
  objective = eval_objective(config, exp.tokenizer.vocab)
  batches = exact_batches(exp, split, documents)
  fn = _eval_fn(exp.model_config, objective)
  sizes = jnp.asarray(token_bytes(exp.tokenizer))
  sharding = mesh_lib.batch_sharding(exp.mesh, exp.rules)
  collected: dict[str, list[np.ndarray]] = {}
  aggregate: dict[str, list[float]] = {}
  with jax.set_mesh(exp.mesh), nn.logical_axis_rules(exp.rules):
    for host_batch in batches:
      batch = {key: jax.make_array_from_process_local_data(sharding, value)
               for key, value in host_batch.items()}
      rows, metrics = fn(params, batch, sizes)
      rows, metrics = _to_host(rows), jax.device_get(metrics)
      for key, value in rows.items():
        collected.setdefault(key, []).append(np.asarray(value))
      for key, (total, count) in metrics.items():
        sums = aggregate.setdefault(key, [0.0, 0.0])
        sums[0] += float(total)
        sums[1] += float(count)
  arrays = {key: np.concatenate(values) for key, values in collected.items()}
  valid = arrays.pop('valid')
  examples = {key: value[valid] for key, value in arrays.items()}
  return summarize(objective, examples, aggregate), examples


def summarize(objective, examples: Mapping[str, np.ndarray],
              aggregate: Mapping[str, tuple[float, float]] | None = None) -> dict[str, float]:
  """Metrics from per-example arrays (float64 sums, integer counts); parts without per-example
  numbers fall back to their aggregate (total, count) metrics."""
  values: dict[str, float] = {'examples': int(len(examples['key']))}
  total_loss = 0.0
  for name, weight, _ in objective.parts:
    if f'{name}.nll' in examples:
      nll = float(np.sum(examples[f'{name}.nll'], dtype=np.float64))
      count = int(np.sum(examples[f'{name}.count'], dtype=np.int64))
      correct = int(np.sum(examples[f'{name}.correct'], dtype=np.int64))
      loss = nll / max(count, 1)
      values.update({f'{name}_loss': loss, f'{name}_accuracy': correct / max(count, 1),
                     f'{name}_predictions': count})
      if f'{name}.bytes' in examples:
        size = int(np.sum(examples[f'{name}.bytes'], dtype=np.int64))
        values.update({f'{name}_perplexity': math.exp(min(loss, 700.0)), f'{name}_bytes': size,
                       f'{name}_bits_per_byte': nll / math.log(2) / max(size, 1)})
    else:
      for key, (total, count) in (aggregate or {}).items():
        if key.startswith(f'{name}_') and count > 0:
          values[key] = total / count
      loss = values.get(f'{name}_loss', 0.0)
    total_loss += weight * loss
  values['loss'] = total_loss
  return values


def evaluate(exp, params, split: str = 'validation') -> dict[str, float]:
  """The metrics of one exact, deterministic pass over `split` (see the module docstring)."""
  return evaluate_examples(exp, params, split)[0]


def save_examples(path: str, examples: Mapping[str, np.ndarray],
                  metrics: Mapping[str, float] | None = None) -> None:
  """Writes per-example arrays (and the metrics they give) as one .npz, atomically."""
  from etils import epath  # pylint: disable=import-outside-toplevel

  target = epath.Path(path)
  temporary = target.parent / f'.{target.name}.tmp'
  with temporary.open('wb') as f:
    np.savez(f, **dict(examples),
             **{f'metric.{key}': np.asarray(value) for key, value in (metrics or {}).items()})
  temporary.replace(target)  # a later evaluation of the run replaces the earlier one


def load_examples(path: str) -> tuple[dict[str, np.ndarray], dict[str, float]]:
  """(per-example arrays, metrics) written by `save_examples`."""
  with np.load(path) as data:
    examples = {key: data[key] for key in data.files if not key.startswith('metric.')}
    metrics = {key[len('metric.'):]: data[key].item() for key in data.files
               if key.startswith('metric.')}
  return examples, metrics
