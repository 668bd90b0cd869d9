"""The jit-compiled train and eval steps: prepare -> model -> loss -> AdamW, all on device."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from objectives.base import Metrics
from training import state as state_lib
from training.state import TrainState


def step_rng(seed: int, step: jax.Array, stream: int) -> jax.Array:
  """The PRNG key of a step: a function of (seed, step, stream) only, so resume is exact."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), stream), step)


TRAIN_STREAM, EVAL_STREAM = 0, 1


def make_train_step(model, objective, seed: int, schedule: optax.Schedule):
  """Returns train_step(state, batch) -> (state, metrics); skips non-finite updates.

  Parameters an objective owns (see training/state.py) are differentiated and updated with
  the model's, by the same optimizer.
  """

  def train_step(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, Metrics]:
    rng = step_rng(seed, state.step, TRAIN_STREAM)
    prepare_rng, dropout_rng = jax.random.split(rng)

    def loss_fn(params):
      model_params, bound = state_lib.split_and_bind(objective, params, model.config, train=True)
      inputs, targets = bound.prepare(prepare_rng, batch)
      outputs = model.apply({'params': model_params}, inputs, train=True,
                            rngs={'dropout': dropout_rng})
      return bound.loss(outputs, targets)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, new_opt_state = state.tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    skipped = (~finite).astype(jnp.int32)
    new_state = state.replace(
        step=state.step + 1,
        params=keep(new_params, state.params),
        opt_state=keep(new_opt_state, state.opt_state),
        nonfinite_total=state.nonfinite_total + skipped,
        nonfinite_streak=jnp.where(finite, 0, state.nonfinite_streak + 1))
    one = jnp.ones((), jnp.float32)
    # Metrics of a skipped step would poison the averages: count them as empty.
    metrics = jax.tree.map(lambda x: jnp.where(finite, x, 0.0), metrics)
    metrics['grad_norm'] = (jnp.where(finite, grad_norm, 0.0), finite.astype(jnp.float32))
    metrics['learning_rate'] = (schedule(state.step).astype(jnp.float32), one)
    return new_state, metrics

  return train_step


def make_eval_step(model, objective, seed: int):
  """Returns eval_step(params, batch, index) -> metrics, with fixed masks per eval batch.

  `params` is the train state's whole params (the objective's own included, if any).
  """

  def eval_step(params: Any, batch: dict[str, jax.Array], index: jax.Array) -> Metrics:
    model_params, bound = state_lib.split_and_bind(objective, params, model.config, train=False)
    inputs, targets = bound.prepare(step_rng(seed, index, EVAL_STREAM), batch)
    outputs = model.apply({'params': model_params}, inputs, train=False)
    _, metrics = bound.loss(outputs, targets)
    return metrics

  return eval_step


@jax.jit
def _add(total: Metrics, metrics: Metrics) -> Metrics:
  return jax.tree.map(jnp.add, total, metrics)


def accumulate(total: Metrics | None, metrics: Metrics) -> Metrics:
  """Adds (total, count) metrics on device, in one dispatch rather than one small op per
  leaf, so logging does not force a sync."""
  return metrics if total is None else _add(total, metrics)
