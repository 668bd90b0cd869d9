"""AdamW with linear warmup, cosine decay, gradient clipping and a weight-decay mask."""

from __future__ import annotations

from typing import Any

import jax
import optax

# Parameters whose name ends with one of these are never decayed: norms, biases, and
# the learned start vector of the query stream.
NO_DECAY_SUFFIXES = ('bias', 'scale', 'query_start', 'lm_bias')


def learning_rate_schedule(opt_config: Any, total_steps: int) -> optax.Schedule:
  peak = opt_config.learning_rate
  warmup = min(opt_config.warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=peak * opt_config.end_learning_rate_ratio)


def decay_mask(params: Any) -> Any:
  """True for parameters that get weight decay (matrices and embeddings)."""

  def decays(path, _):
    names = [getattr(key, 'key', getattr(key, 'name', '')) for key in path]
    names = [str(name) for name in names if name not in ('value',)]
    return not any(names[-1].endswith(suffix) for suffix in NO_DECAY_SUFFIXES) if names else True

  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(opt_config: Any, total_steps: int) -> optax.GradientTransformation:
  schedule = learning_rate_schedule(opt_config, total_steps)
  return optax.chain(
      optax.clip_by_global_norm(opt_config.grad_clip_norm),
      optax.adamw(schedule, b1=opt_config.b1, b2=opt_config.b2, eps=opt_config.eps,
                  weight_decay=opt_config.weight_decay, mask=decay_mask),
  )
