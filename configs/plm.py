"""Permutation LM (XLNet) on packed windows. Presets: tiny (CPU, default) and xlnet_base.

Positions are rotary: the shared model has no Transformer-XL relative encoding, and rotary
is the relative scheme closest to it; it also gives each target's query stream its position
inside attention. No memory/recurrence and no bidirectional data pipeline.
"""

from configs import base

# XLNet's architecture on the shared Transformer: post-LN as in Transformer-XL, tied output
# embeddings with a bias, rotary in place of relative positional encoding. The query stream
# (model.two_stream) is switched on by the objective's model_overrides.
_ARCHITECTURE = dict(norm='post', position='rotary', num_token_types=0, layer_norm_eps=1e-12)

PRESETS = ('tiny', 'xlnet_base')


def get_config(preset: str = 'tiny'):
  preset = preset or 'tiny'
  if preset not in PRESETS:
    raise ValueError(f'Unknown preset {preset!r} for configs/plm.py: choose one of '
                     f'{", ".join(PRESETS)}.')
  if preset == 'xlnet_base':
    # XLNet's pretraining recipe where the shared trainer has it: Adam (b2 0.999, eps 1e-6),
    # peak lr 4e-4 after 40k warmup steps, weight decay 0.01, clipping at 1.0, dropout 0.1,
    # decay to 0 (XLNet decays linearly; the shared schedule is cosine). The batch is the
    # base preset's 256 windows of 512 (BERT-Base budget; XLNet-Large used 8192).
    config = base.get_config('plm', 'base', batch_size=256, seq_len=512, total_steps=500_000,
                             learning_rate=4e-4, warmup_steps=40_000)
    config.model.update(**_ARCHITECTURE)
    config.model.update(max_len=512, dropout=0.1, dtype='bfloat16')
    config.optimizer.update(b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01, grad_clip_norm=1.0,
                            end_learning_rate_ratio=0.0)
  else:
    config = base.get_config('plm', 'tiny')
    config.model.update(**_ARCHITECTURE)
    config.model.max_len = config.seq_len
  config.plm.update(k=6, num_predict=0, max_span=5)
  return config
