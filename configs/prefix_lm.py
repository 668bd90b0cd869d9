"""Prefix LM (T5's objective study, UL2's S-denoiser) on packed windows, per document.
Presets: tiny (CPU, default), small, base. Architecture as configs/clm.py (pre-LN decoder)."""

from configs import base


def get_config(preset: str = 'tiny'):
  preset = preset or 'tiny'
  config = base.get_config('prefix_lm', preset)
  if preset == 'tiny':
    config.model.max_len = config.seq_len
  return config
