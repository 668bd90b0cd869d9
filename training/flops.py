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
  """Forward + backward matmul FLOPs for one sequence (3x the forward pass).

  Counts the layer matmuls for the seq_len content tokens plus `num_queries` query-stream
  tokens (permutation LM), full attention scores and weighted sums, and the vocabulary
  projection at `num_logits` positions (plus the pooler/transform where present). With a
  query stream the last layer computes only the content keys and values (models/transformer.py
  Block), so its content queries, attention, output projection and MLP are not counted.
  """
  d, f, n, h = cfg.embed_dim, cfg.mlp_dim, cfg.num_heads, cfg.resolved_head_dim
  tokens = seq_len + num_queries
  per_token_layer = 2 * (3 * d * n * h) + 2 * (n * h * d) + 2 * (2 * d * f)
  if num_queries:
    per_token_layer_queries = 2 * (d * n * h) + 2 * (n * h * d) + 2 * (2 * d * f)
    layers = seq_len * per_token_layer + num_queries * per_token_layer_queries
  else:
    layers = tokens * per_token_layer
  attention = 2 * 2 * tokens * seq_len * n * h
  forward = cfg.num_layers * (layers + attention)
  if num_queries:  # the last layer's dead content stream
    forward -= seq_len * (per_token_layer_queries + 2 * 2 * seq_len * n * h)
  forward += 2 * num_logits * d * cfg.vocab_size
  if cfg.lm_transform:
    forward += 2 * num_logits * d * d
  if cfg.num_sentence_classes:
    forward += 2 * d * d + 2 * d * cfg.num_sentence_classes
  return 3.0 * forward


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
