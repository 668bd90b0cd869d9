"""Masked LM alone on packed windows of whole documents (RoBERTa-style: no NSP, masks
redrawn every step). Presets: tiny (CPU, default) and base."""

from configs import base

# RoBERTa's architecture on top of the shared Transformer: post-LN, learned positions, the
# dense + gelu + norm transform before the tied output, no sentence A/B embeddings.
_ARCHITECTURE = dict(norm='post', position='learned', num_token_types=0, lm_transform=True)

PRESETS = ('tiny', 'base')


def get_config(preset: str = 'tiny'):
  preset = preset or 'tiny'
  if preset not in PRESETS:
    raise ValueError(f'Unknown preset {preset!r} for configs/mlm.py: choose one of '
                     f'{", ".join(PRESETS)}.')
  config = base.get_config('mlm', preset)
  config.model.update(**_ARCHITECTURE)
  if preset == 'base':
    config.model.update(dropout=0.1, layer_norm_eps=1e-5, dtype='bfloat16')
    # RoBERTa's FULL-SENTENCES: windows cross document boundaries, attention by length only.
    config.data.attend_across_documents = True
    config.optimizer.update(b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.01)
  else:
    config.model.max_len = config.seq_len
  # 15% of the candidate tokens: real, not special, not whitespace-only pieces (BERT's WordPiece
  # has none), which is 12.4% of the real tokens of the built-in corpus.
  config.mlm.update(mask_rate=0.15, max_predictions=0, unit='token')
  return config
