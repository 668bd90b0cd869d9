"""The `config.data` block: shared settings plus every registered source's and format's own.

Imports only the registries (no tensorflow_datasets, no JAX), so configs load fast.
"""

from __future__ import annotations

import ml_collections

from data import formats, sources

TOKENIZER_MODEL_TYPES = ('unigram', 'bpe', 'char', 'word')


def data_config(vocab_size: int) -> ml_collections.ConfigDict:
  """Defaults of `config.data` for a run whose trained tokenizer has `vocab_size` pieces."""
  values = dict(
      source='builtin',  # a registered source: builtin | text | tfds | pretokenized
      format='',  # '' = what the objective reads; or a format name where it reads either
      tokenizer='',  # path to a SentencePiece .model; '' trains one on the training split
      vocab_size=vocab_size,
      tokenizer_max_chars=5_000_000,  # characters of training text the tokenizer sees
      tokenizer_model_type='unigram',  # SentencePiece model: unigram | bpe | char | word
      tokenizer_user_symbols='',  # comma-separated pieces never split, e.g. '<unk>,@-@'
      shuffle=True,
      # Training batches read and put on the device this many steps ahead, in a background
      # thread (training/prefetch.py); 0 reads each in the training thread. Same batches.
      prefetch=2,
      # Host cores that read and tokenize text on the fly: 1 does it in the reading thread;
      # N > 1 reads and encodes the next documents in a background thread on N - 1
      # SentencePiece threads while batches are packed. Same batches and positions for any N.
      workers=1,
  )
  for key, value in {**sources.defaults(), **formats.defaults()}.items():
    values.setdefault(key, value)
  return ml_collections.ConfigDict(values)
