"""FLOP counts: only the logits an objective computes are counted."""

from __future__ import annotations

from data.vocab import toy_vocab
from models.config import ModelConfig
from objectives import registry
from training import flops


def test_logit_flops_follow_what_each_objective_predicts():
  cfg = ModelConfig(vocab_size=1000, num_layers=2, embed_dim=64, num_heads=4, mlp_dim=256)
  seq_len = 120
  counts = {}
  for name in ('clm', 'mlm', 'plm'):
    objective = registry.build(name, registry.defaults, vocab=toy_vocab(1000), seq_len=seq_len)
    overrides = objective.model_overrides()
    counts[name] = flops.objective_flops_per_sequence(
        objective, ModelConfig(**{**cfg.__dict__, **overrides}), seq_len)
  logit_flops = 3 * 2 * cfg.embed_dim * cfg.vocab_size
  body = flops.train_flops_per_sequence(cfg, seq_len, 0)
  assert counts['clm'] == body + seq_len * logit_flops
  assert counts['mlm'] == body + 18 * logit_flops  # ceil(0.15 * 120) predictions
  assert counts['plm'] > body + 20 * logit_flops  # 20 targets plus their query stream
  assert counts['plm'] < counts['clm']
