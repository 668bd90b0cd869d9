"""Fine-tuning one task with one strategy: encode the splits, train, evaluate, repeat over a
small grid of learning rates and epochs and several seeds, select on the dev split.

Everything here takes the pretrained parameters and model config as arguments, so tests and
benchmarks use it without a workdir; `tools/finetune.py` loads them from a pretraining run.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Sequence

import jax
import numpy as np
import optax

from downstream import encoding, heads, metrics as metrics_lib, results, strategies
from downstream.model import DownstreamModel
from downstream.tasks.base import Task


@dataclasses.dataclass
class EncodedSplit:
  """One split as model arrays; QA splits keep their windows and contexts for decoding."""

  arrays: dict[str, np.ndarray]
  examples: list[dict[str, Any]]
  windows: encoding.QaWindows | None = None

  @property
  def size(self) -> int:
    return len(next(iter(self.arrays.values())))


def encode_task(task: Task, tokenizer, seq_len: int, causal: bool, *, doc_stride: int = 64,
                max_query_tokens: int = 32) -> dict[str, EncodedSplit]:
  """Every split of `task` encoded for a model of this attention kind."""
  layout = encoding.layout_for(tokenizer.vocab, causal)
  encoded = {}
  for split, examples in task.splits.items():
    if task.kind == 'qa':
      windows = encoding.encode_qa(tokenizer, examples, seq_len, layout, doc_stride=doc_stride,
                                   max_query_tokens=max_query_tokens)
      encoded[split] = EncodedSplit(windows.arrays, examples, windows)
    else:
      arrays = encoding.encode_texts(tokenizer, examples, seq_len, layout,
                                     regression=task.kind == 'regression')
      encoded[split] = EncodedSplit(arrays, examples)
  return encoded


@dataclasses.dataclass(frozen=True)
class TrainSettings:
  """One point of the grid: learning rate, epochs, seed, and the fixed recipe around them."""

  learning_rate: float
  epochs: int
  seed: int = 0
  batch_size: int = 32
  warmup_fraction: float = 0.1
  weight_decay: float = 0.01
  grad_clip_norm: float = 1.0
  max_steps: int = 0  # > 0 caps the steps (smoke runs)
  max_answer_tokens: int = 30  # extractive QA: the longest answer span decoded


def planned_steps(settings: TrainSettings, examples: int) -> tuple[int, int]:
  """(batch size, steps): whole batches per epoch times the epochs, capped by max_steps."""
  batch_size = min(settings.batch_size, examples)
  steps = examples // batch_size * settings.epochs
  return batch_size, min(steps, settings.max_steps) if settings.max_steps else steps


def make_optimizer(settings: TrainSettings, labels: Any, steps: int) -> optax.GradientTransformation:
  """The recipe's AdamW: linear warmup over warmup_fraction of the steps, then linear decay
  to zero, weight decay and gradient clipping, on the parameters `labels` marks trainable."""
  warmup = int(settings.warmup_fraction * steps)
  schedule = optax.join_schedules(
      [optax.linear_schedule(0.0, settings.learning_rate, max(warmup, 1)),
       optax.linear_schedule(settings.learning_rate, 0.0, max(steps - warmup, 1))], [warmup])
  return strategies.make_optimizer(labels, schedule, weight_decay=settings.weight_decay,
                                   grad_clip_norm=settings.grad_clip_norm)


@dataclasses.dataclass
class RunResult:
  scores: dict[str, dict[str, float]]  # split -> metric -> value
  trained_params: int
  total_params: int
  steps: int
  examples_per_sec: float
  params: Any = None


def model_batches(arrays: dict[str, np.ndarray], batch_size: int, order: np.ndarray
                  ) -> list[dict[str, np.ndarray]]:
  """Full batches of the rows in `order` (the remainder dropped)."""
  count = len(order) // batch_size
  return [{k: v[order[i * batch_size:(i + 1) * batch_size]] for k, v in arrays.items()}
          for i in range(count)]


def make_train_step(loss_fn, tx: optax.GradientTransformation, labels: Any, seed: int):
  """(params, opt_state, batch, step) -> (params, opt_state, loss), jitted, for any
  `loss_fn(params, batch, rng) -> scalar`; dropout's key is the seed's, folded with the step."""

  @jax.jit
  def train_step(params, opt_state, batch, step):
    rng = jax.random.fold_in(jax.random.key(seed), step)
    loss, grads = jax.value_and_grad(loss_fn)(params, batch, rng)
    updates, opt_state = tx.update(grads, opt_state, params)
    return strategies.apply_updates(params, updates, labels), opt_state, loss

  return train_step


def task_loss(model: DownstreamModel):
  """The task head's loss on a training batch, as make_train_step takes it."""
  return lambda params, batch, rng: heads.loss(
      model.kind, model.apply(params, batch, train=True, rng=rng), batch)


def run_steps(train_step, params: Any, opt_state: Any, arrays: dict[str, np.ndarray],
              batch_size: int, steps: int, order_rng: np.random.Generator
              ) -> tuple[Any, int, float]:
  """`steps` updates over full batches, a fresh permutation each epoch; returns (params,
  steps taken, examples per second after the first step, which compiles)."""
  size = len(arrays['tokens'])
  step, start, timed_examples, loss = 0, None, 0, None
  while step < steps:
    for batch in model_batches(arrays, batch_size, order_rng.permutation(size)):
      if step >= steps:
        break
      params, opt_state, loss = train_step(params, opt_state, batch, step)
      step += 1
      if start is None:
        jax.block_until_ready(loss)
        start = time.perf_counter()
      else:
        timed_examples += batch_size
  if loss is not None:
    jax.block_until_ready(loss)
  elapsed = time.perf_counter() - start if start is not None else 0.0
  return params, step, timed_examples / elapsed if elapsed > 0 else 0.0


def make_predict(model: DownstreamModel):
  """(params, batch) -> per-example predictions, jitted."""
  return jax.jit(lambda params, batch: heads.predictions(model.kind, model.apply(params, batch)))


def predict(predict_fn, params: Any, arrays: dict[str, np.ndarray], batch_size: int) -> np.ndarray:
  """Predictions for every row; the last batch is padded (with row 0) to keep one shape."""
  size = len(arrays['tokens'])
  outputs = []
  for begin in range(0, size, batch_size):
    rows = np.arange(begin, begin + batch_size)
    rows = np.where(rows < size, rows, 0)
    batch = {k: v[rows] for k, v in arrays.items()}
    outputs.append(np.asarray(predict_fn(params, batch))[:min(batch_size, size - begin)])
  return np.concatenate(outputs)


def score(task: Task, split: EncodedSplit, outputs: np.ndarray, *,
          max_answer_tokens: int = 30) -> dict[str, float]:
  """The task's metrics on one split's predictions."""
  if task.kind == 'qa':
    texts = encoding.decode_spans(outputs[..., 0], outputs[..., 1], split.windows,
                                  [e['context'] for e in split.examples],
                                  max_answer_tokens=max_answer_tokens)
    return metrics_lib.squad_scores(texts, [[a['text'] for a in e['answers']]
                                            for e in split.examples])
  return metrics_lib.compute(task.metrics, outputs, split.arrays['label'])


def train_and_evaluate(model: DownstreamModel, strategy: strategies.Strategy, backbone: Any,
                       task: Task, encoded: dict[str, EncodedSplit], settings: TrainSettings, *,
                       ordinary_ids: np.ndarray, eval_splits: Sequence[str] = ('validation',),
                       keep_params: bool = False) -> RunResult:
  """Fine-tunes a fresh head (plus the strategy's parameters) and scores `eval_splits`.

  LoRA's merge scale is the strategy's (lora_alpha / lora_rank), whatever `model` was built
  with, so that the adapters take part in the forward pass; a linear probe's frozen backbone
  runs without dropout, so the head trains on the features it is evaluated on."""
  if strategy.name == 'lora' and model.lora_scale != strategy.lora_scale:
    model = dataclasses.replace(model, lora_scale=strategy.lora_scale)
  if strategy.deterministic_backbone and model.model_config.dropout:
    model = dataclasses.replace(
        model, model_config=dataclasses.replace(model.model_config, dropout=0.0))
  train = encoded['train']
  batch_size, steps = planned_steps(settings, train.size)
  key = jax.random.key(settings.seed)
  head_key, extra_key, order_key = jax.random.split(key, 3)
  example = {k: v[:batch_size] for k, v in train.arrays.items()}
  params = {'backbone': backbone, 'head': model.init_head(head_key, example)}
  params = strategy.add_params(extra_key, params, ordinary_ids)
  labels = strategy.labels(params)
  tx = make_optimizer(settings, labels, steps)
  opt_state = tx.init(params)
  train_step = make_train_step(task_loss(model), tx, labels, settings.seed)
  rng = np.random.default_rng(np.asarray(jax.random.key_data(order_key)).ravel())
  params, step, examples_per_sec = run_steps(train_step, params, opt_state, train.arrays,
                                             batch_size, steps, rng)
  predict_fn = make_predict(model)
  scores = {split: score(task, encoded[split],
                         predict(predict_fn, params, encoded[split].arrays, batch_size),
                         max_answer_tokens=settings.max_answer_tokens)
            for split in eval_splits if split in encoded}
  total = int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))
  return RunResult(scores=scores, trained_params=strategies.trained_count(params, labels),
                   total_params=total, steps=step, examples_per_sec=examples_per_sec,
                   params=params if keep_params else None)


def seed_scores(values: Sequence[float]) -> dict[str, Any]:
  """{'mean', 'std' (population, ddof=0, as results files hold it; 0 for one value), 'values'}
  of per-seed scores."""
  mean, std = results.mean_std(values, ddof=0)
  return {'mean': mean, 'std': std, 'values': [float(v) for v in values]}


def summarize(runs: Sequence[RunResult], split: str) -> dict[str, dict[str, Any]]:
  """metric -> mean/std/values over the seeds' runs of one grid point."""
  names = runs[0].scores[split].keys()
  return {name: seed_scores([run.scores[split][name] for run in runs]) for name in names}


def _selection_score(point: dict[str, Any], metric: str) -> float:
  """A grid point's mean dev score for selection; a NaN (a diverged run) ranks below all."""
  value = point['dev'][metric]['mean']
  return value if not math.isnan(value) else -math.inf


def grid_search(model: DownstreamModel, strategy: strategies.Strategy, backbone: Any, task: Task,
                encoded: dict[str, EncodedSplit], *, learning_rates: Sequence[float],
                epochs: Sequence[int], seeds: Sequence[int], base: TrainSettings,
                ordinary_ids: np.ndarray, log=print) -> dict[str, Any]:
  """Every (learning rate, epochs) for every seed; the point with the best mean dev score of
  the task's main metric is selected (a NaN score, from a diverged run, never is), and its
  test scores (if the task has a test split) reported. Returns the results fields of
  docs/downstream.md (without the run's context)."""
  eval_splits = ('validation', 'test') if 'test' in encoded else ('validation',)
  grid = []
  for lr in learning_rates:
    for epoch_count in epochs:
      runs = []
      for seed in seeds:
        settings = dataclasses.replace(base, learning_rate=float(lr), epochs=int(epoch_count),
                                       seed=int(seed))
        run = train_and_evaluate(model, strategy, backbone, task, encoded, settings,
                                 ordinary_ids=ordinary_ids, eval_splits=eval_splits)
        runs.append(run)
        log(f'{task.name} | {strategy.name} | lr {lr:g} | epochs {epoch_count} | seed {seed} | '
            + ' '.join(f'{k} {v:.4f}' for k, v in run.scores['validation'].items())
            + f' | {run.examples_per_sec:.1f} examples/s')
      point = {'learning_rate': float(lr), 'epochs': int(epoch_count),
               'dev': summarize(runs, 'validation'),
               'examples_per_sec': float(np.mean([r.examples_per_sec for r in runs])),
               'steps': runs[0].steps}
      if 'test' in encoded:
        point['test'] = summarize(runs, 'test')
      grid.append((point, runs))
  best, best_runs = max(grid, key=lambda item: _selection_score(item[0], task.main_metric))
  return {
      'metric': task.main_metric,
      'selected': {'learning_rate': best['learning_rate'], 'epochs': best['epochs']},
      'dev': best['dev'],
      'test': best.get('test'),
      'grid': [point for point, _ in grid],
      'seeds': [int(s) for s in seeds],
      'trained_params': best_runs[0].trained_params,
      'total_params': best_runs[0].total_params,
      'examples_per_sec': best['examples_per_sec'],
  }
