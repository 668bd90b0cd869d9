"""Deshuffling (T5's objective study): one document chunk per example (format
`document_chunks`, (seq_len - 2) // 2 tokens at most), shuffled, then its original order.
Presets: tiny (CPU, default), small, base. Architecture as configs/clm.py."""

from configs import base


def get_config(preset: str = 'tiny'):
  preset = preset or 'tiny'
  config = base.get_config('deshuffle', preset)
  if preset == 'tiny':
    config.model.max_len = config.seq_len
  return config
