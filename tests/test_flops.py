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
  # 20 targets plus their query stream, less the last layer's dead content stream
  d, f = cfg.embed_dim, cfg.mlp_dim
  query_stream = 3 * cfg.num_layers * (20 * (4 * d * d + 4 * d * f) + 4 * 20 * seq_len * d)
  dead = 3 * (seq_len * (4 * d * d + 4 * d * f) + 4 * seq_len * seq_len * d)
  assert counts['plm'] == body + query_stream - dead + 20 * logit_flops
  assert counts['plm'] < counts['clm']


def _counts(names, cfg, seq_len):
  """FLOPs per sequence of each objective at its defaults, and (objective, model config)."""
  counts, objectives = {}, {}
  for name in names:
    objective = registry.build(name, registry.defaults, vocab=toy_vocab(1000), seq_len=seq_len)
    model_cfg = ModelConfig(**{**cfg.__dict__, **objective.model_overrides()})
    counts[name] = flops.objective_flops_per_sequence(objective, model_cfg, seq_len)
    objectives[name] = (objective.parts[0][2], model_cfg)
  return counts, objectives


def test_new_objectives_count_their_target_logits_and_electra_its_generator():
  cfg = ModelConfig(vocab_size=1000, num_layers=2, embed_dim=64, num_heads=4, mlp_dim=256)
  seq_len = 128
  counts, objectives = _counts(('prefix_lm', 'span_corruption', 'deshuffle', 'electra'), cfg,
                               seq_len)
  logit_flops = 3 * 2 * cfg.embed_dim * cfg.vocab_size
  body = flops.train_flops_per_sequence(cfg, seq_len, 0)
  assert counts['prefix_lm'] == body + seq_len * logit_flops  # logits everywhere, like CLM
  assert counts['deshuffle'] == body + 64 * logit_flops  # the 64 target positions only
  span, span_cfg = objectives['span_corruption']
  # 15% noise at mean span 3 over the 114 window tokens used (the input ends with EOS): at most 17 noise tokens, 6
  # sentinels and the final EOS are predicted, over a vocabulary grown by those 6 sentinels.
  assert (span.raw_len, span.max_target_len, span_cfg.vocab_size) == (114, 24, 1006)
  assert counts['span_corruption'] == (flops.train_flops_per_sequence(span_cfg, seq_len, 0)
                                       + 24 * 3 * 2 * cfg.embed_dim * 1006)
  # ELECTRA: the discriminator computes no vocabulary logits; the generator (width 16, one
  # head, MLP 64, same depth) runs forward and backward on every token, and its tied output
  # scores the 20 masked positions against the shared 64-wide table.
  gen = ModelConfig(vocab_size=1000, num_layers=2, embed_dim=16, num_heads=1, mlp_dim=64)
  d, g, v, p = 64, 16, 1000, 20
  generator = flops.train_flops_per_sequence(gen, seq_len, 0) + 3 * (
      2 * seq_len * d * g + p * (2 * g * d + 2 * d * v))
  head = 3 * seq_len * (2 * d * d + 2 * d)
  assert counts['electra'] == body + generator + head
  assert generator > 0.15 * body  # not a rounding error: about a fifth of the discriminator's
