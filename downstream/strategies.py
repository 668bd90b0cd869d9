"""Fine-tuning strategies: which parameters train, as labels for `optax.multi_transform`.

The parameter tree of a downstream model is {'backbone': the pretrained Transformer's,
'head': the task head's, 'prompt': soft-prompt vectors [P, embed] (prompt tuning),
'lora': adapters (LoRA)}. A strategy adds what it needs and labels every leaf 'trained' or
'frozen'; frozen leaves get no optimizer state and are returned untouched (the same arrays,
so bit-identical) by `apply_updates`.

  - full: everything trains;
  - linear_probe: only the head, on features of the frozen backbone run without dropout (its
    features are a fixed function of the input; the head's own dropout still applies);
  - ffn_only: the feed-forward blocks (every layer's `mlp`) and the head;
  - prompt_tuning: soft-prompt vectors prepended after the embedding, and the head;
  - lora: rank-r adapters on the attention projections (query, key, value, out) and the head.
    W' = W + A @ B * alpha / r is merged into the backbone before each forward pass, so the
    model itself is untouched; B starts at zero, so training starts from the pretrained model.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from training import optim

TRAINED, FROZEN = 'trained', 'frozen'
LORA_PROJECTIONS = {'query': 1, 'key': 1, 'value': 1, 'out': 2}  # name -> contracted input axes

_RULES: dict[str, Callable[[tuple[str, ...]], bool]] = {
    'full': lambda names: names[0] in ('backbone', 'head'),
    'linear_probe': lambda names: names[0] == 'head',
    'ffn_only': lambda names: names[0] == 'head' or (names[0] == 'backbone' and 'mlp' in names),
    'prompt_tuning': lambda names: names[0] in ('head', 'prompt'),
    'lora': lambda names: names[0] in ('head', 'lora'),
}
NAMES = tuple(_RULES)


def _names(path) -> tuple[str, ...]:
  return tuple(str(getattr(key, 'key', getattr(key, 'name', getattr(key, 'idx', key))))
               for key in path)


@dataclasses.dataclass(frozen=True)
class Strategy:
  """One fine-tuning strategy and its settings (config.strategy, config.lora_*, config.prompt_length)."""

  name: str
  lora_rank: int = 8
  lora_alpha: float = 16.0
  prompt_length: int = 20

  def __post_init__(self):
    if self.name not in _RULES:
      raise ValueError(f'Unknown config.strategy={self.name!r}: choose from {list(NAMES)}.')
    if self.name == 'lora' and self.lora_rank < 1:
      raise ValueError(f'config.lora_rank must be at least 1, got {self.lora_rank}.')
    if self.name == 'prompt_tuning' and self.prompt_length < 1:
      raise ValueError(f'config.prompt_length must be at least 1, got {self.prompt_length}.')

  @property
  def uses_prompt(self) -> bool:
    return self.name == 'prompt_tuning'

  @property
  def deterministic_backbone(self) -> bool:
    """Whether the backbone runs without dropout in training (nothing of it trains)."""
    return self.name == 'linear_probe'

  @property
  def lora_scale(self) -> float:
    return self.lora_alpha / self.lora_rank if self.name == 'lora' else 0.0

  def add_params(self, rng: jax.Array, params: dict[str, Any], ordinary_ids: np.ndarray
                 ) -> dict[str, Any]:
    """`params` plus the prompt vectors or adapters this strategy trains."""
    params = dict(params)
    if self.name == 'prompt_tuning':
      # Lester et al.: start from the embeddings of random vocabulary entries.
      table = params['backbone']['token_embed']['embedding']
      ids = jax.random.choice(rng, jnp.asarray(ordinary_ids), (self.prompt_length,))
      params['prompt'] = jnp.asarray(table[ids], jnp.float32)
    elif self.name == 'lora':
      params['lora'] = init_lora(rng, params['backbone'], self.lora_rank)
    return params

  def labels(self, params: Any) -> Any:
    """'trained' or 'frozen' for every leaf of `params`."""
    rule = _RULES[self.name]
    return jax.tree_util.tree_map_with_path(
        lambda path, _: TRAINED if rule(_names(path)) else FROZEN, params)


def lora_targets(backbone: Any) -> dict[tuple[str, ...], int]:
  """Flattened paths of the attention projection kernels -> their contracted input axes."""
  flat = traverse_util.flatten_dict(backbone)
  return {key: LORA_PROJECTIONS[key[-2]] for key in flat
          if key[-1] == 'kernel' and len(key) >= 3 and key[-2] in LORA_PROJECTIONS
          and key[-3] == 'attention'}


def _split_shape(shape: tuple[int, ...], contract: int) -> tuple[tuple[int, ...], int, int]:
  """(leading layer axes, input size, output size) of a projection kernel."""
  lead = len(shape) - 3  # 1 with scanned layers, else 0
  return shape[:lead], math.prod(shape[lead:lead + contract]), math.prod(shape[lead + contract:])


def init_lora(rng: jax.Array, backbone: Any, rank: int) -> dict[str, Any]:
  """A [.., in, r] ~ N(0, 1/in) and B [.., r, out] = 0 per attention projection."""
  flat = traverse_util.flatten_dict(backbone)
  adapters = {}
  for index, (key, contract) in enumerate(sorted(lora_targets(backbone).items())):
    lead, fan_in, fan_out = _split_shape(flat[key].shape, contract)
    a = jax.random.normal(jax.random.fold_in(rng, index), (*lead, fan_in, rank), jnp.float32)
    adapters[key[:-1] + ('a',)] = a / math.sqrt(fan_in)
    adapters[key[:-1] + ('b',)] = jnp.zeros((*lead, rank, fan_out), jnp.float32)
  if not adapters:
    raise ValueError('config.strategy=lora found no attention projections in the checkpoint.')
  return traverse_util.unflatten_dict(adapters)


def merge_lora(backbone: Any, lora: Any, scale: float) -> Any:
  """The backbone with W + A @ B * scale on every adapted projection (differentiable)."""
  flat = traverse_util.flatten_dict(backbone)
  adapters = traverse_util.flatten_dict(lora)
  for key in lora_targets(backbone):
    a, b = adapters[key[:-1] + ('a',)], adapters[key[:-1] + ('b',)]
    kernel = flat[key]
    flat[key] = kernel + (jnp.matmul(a, b) * scale).reshape(kernel.shape).astype(kernel.dtype)
  return traverse_util.unflatten_dict(flat)


def make_optimizer(labels: Any, schedule: optax.Schedule, *, weight_decay: float,
                   grad_clip_norm: float) -> optax.GradientTransformation:
  """AdamW with clipping on the trained leaves (no decay on norms and biases); frozen get none."""
  trained = optax.chain(
      optax.clip_by_global_norm(grad_clip_norm),
      optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=weight_decay,
                  mask=optim.decay_mask))
  return optax.multi_transform({TRAINED: trained, FROZEN: optax.set_to_zero()}, labels)


def apply_updates(params: Any, updates: Any, labels: Any) -> Any:
  """Adds the updates to trained leaves only; frozen leaves come back as the same arrays."""
  return jax.tree.map(lambda p, u, label: p + u.astype(p.dtype) if label == TRAINED else p,
                      params, updates, labels)


def trained_count(params: Any, labels: Any) -> int:
  """How many parameters a strategy trains (the head and adapters included)."""
  return int(sum(np.prod(p.shape) for p, label in zip(jax.tree.leaves(params),
                                                      jax.tree.leaves(labels))
                 if label == TRAINED))
