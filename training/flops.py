"""Model FLOPs per training step, counting only the logits actually computed, and MFU."""

from __future__ import annotations

import jax

from models.config import ModelConfig

# Dense bf16 peak per device (datasheet numbers), the denominator of model-FLOPs utilization.
PEAK_FLOPS = {
    'H100': 989e12, 'H200': 989e12, 'A100': 312e12, 'L4': 121e12, 'A10': 125e12,
    'TPU v4': 275e12, 'TPU v5 lite': 197e12, 'TPU v5e': 197e12, 'TPU v5p': 459e12,
    'TPU v6 lite': 918e12, 'TPU v6e': 918e12,
}


def train_flops_per_sequence(cfg: ModelConfig, seq_len: int, num_logits: int,
                             num_queries: int = 0) -> float:
  """Forward + backward matmul FLOPs for one sequence: `ModelConfig.train_flops_per_sequence`."""
  return cfg.train_flops_per_sequence(seq_len, num_logits, num_queries)


def peak_flops_per_device(device: jax.Device | None = None) -> float | None:
  """Datasheet bf16 peak of the device, or None when unknown (CPU)."""
  device = device or jax.devices()[0]
  kind = getattr(device, 'device_kind', '')
  for name, peak in PEAK_FLOPS.items():
    if name.lower() in kind.lower():
      return peak
  return None


def objective_flops_per_sequence(objective, cfg: ModelConfig, seq_len: int) -> float:
  """Training FLOPs per sequence for `objective`, reading which logits its prepare() asks for.

  An objective (or a part of a weighted one) that runs networks of its own, such as ELECTRA's
  generator, adds their cost through `extra_train_flops(model_config, seq_len)`.
  """
  from data import pipeline  # pylint: disable=import-outside-toplevel

  example = pipeline.example_batch(objective.data_format, 1, seq_len)
  inputs, _ = jax.eval_shape(objective.prepare, jax.random.key(0), example)
  num_queries = 0 if inputs.query_index is None else inputs.query_index.shape[1]
  if inputs.query_index is not None:
    num_logits = num_queries
  elif inputs.predict_index is not None:
    num_logits = inputs.predict_index.shape[1]
  else:
    num_logits = seq_len if inputs.compute_logits else 0
  extra = sum(part.extra_train_flops(cfg, seq_len) for part in _parts(objective)
              if hasattr(part, 'extra_train_flops'))
  return train_flops_per_sequence(cfg, seq_len, num_logits, num_queries) + extra


def _parts(objective) -> list:
  parts = getattr(objective, 'parts', None)
  return [objective] if parts is None else [part for _, _, part in parts]
