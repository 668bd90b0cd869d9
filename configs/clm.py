"""Causal language modeling (GPT). Presets: tiny (CPU, default), small, gpt2_small (124M)."""

from configs import base


def get_config(preset: str = 'tiny'):
  preset = preset or 'tiny'
  if preset == 'gpt2_small':
    config = base.get_config('clm', 'base', batch_size=32, seq_len=1024, learning_rate=6e-4)
    config.model.update(max_len=1024, position='learned', norm='pre', dropout=0.0,
                        dtype='bfloat16')
    config.data.vocab_size = 32000
    # As GPT-2 (and nanoGPT) train: a window's documents see one another, so attention is
    # plain causal (cuDNN skips the masked tiles) with no dense mask.
    config.data.attend_across_documents = True
    # Logits + cross-entropy 128 positions at a time (4096 tokens of a batch of 32): the
    # [32, 1024, vocab] float32 logits (4.2 GB at vocab 32000) are never held at once.
    config.clm.loss_chunk = 128
    return config
  config = base.get_config('clm', preset)
  if preset == 'tiny':
    config.model.max_len = config.seq_len
  return config
