"""ELECTRA replaced-token detection on packed windows. Presets: tiny (CPU, default), base.

The discriminator is the shared model with BERT's post-LN architecture, as in ELECTRA; the
generator is sized by config.electra.generator_fraction. `base` follows ELECTRA-Base's
recipe where the shared trainer has it (the paper decays linearly; the schedule here is
cosine): lr 2e-4, 10k warmup, Adam b2 0.999, eps 1e-6, weight decay 0.01, batch 256 of 512,
generator 1/3 of the width (the released base model's), dropout 0.1.

config.electra.mask_rate (0.15, ELECTRA-Base's) is a fraction of the candidate tokens: real,
not special and not whitespace-only pieces, which ELECTRA's WordPiece text does not have; on
the built-in corpus that is 12.4% of the real tokens.
"""

from configs import base

_ARCHITECTURE = dict(norm='post', position='learned', num_token_types=0, lm_transform=False)


def get_config(preset: str = 'tiny'):
  preset = preset or 'tiny'
  if preset not in ('tiny', 'base'):
    raise ValueError(f'Unknown preset {preset!r} for electra: choose tiny or base.')
  if preset == 'base':
    config = base.get_config('electra', 'base', batch_size=256, seq_len=512, total_steps=766_000,
                             learning_rate=2e-4, warmup_steps=10_000)
    config.model.update(**_ARCHITECTURE)
    config.model.update(dropout=0.1, layer_norm_eps=1e-12, dtype='bfloat16')
    config.optimizer.update(b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01)
    config.electra.generator_fraction = 1 / 3
    return config
  config = base.get_config('electra', 'tiny')
  config.model.update(**_ARCHITECTURE)
  config.model.max_len = config.seq_len
  return config
