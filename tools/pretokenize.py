"""Tokenizes a source's splits once into memory-mapped shards for the `pretokenized` source.

  python tools/pretokenize.py --config configs/bert.py:tiny --output data/pretok \
      --config.data.source=text --config.data.train_files='corpus/*.txt'
  python train.py --config configs/bert.py:tiny --workdir runs/x \
      --config.data.source=pretokenized --config.data.pretokenized_dir=data/pretok

The tokenizer is config.data.tokenizer, or one trained on the training split as train.py
would (cached); it is copied next to the shards with the corpus and tokenizer fingerprints.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ''):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # pylint: disable=wrong-import-position
from ml_collections import config_flags  # pylint: disable=wrong-import-position

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/clm.py', 'Config file[:preset].')
_OUTPUT = flags.DEFINE_string('output', None, 'Directory for the shards.', required=True)
_SPLITS = flags.DEFINE_list('splits', ['train', 'validation'], 'Splits to tokenize.')
_SHARDS = flags.DEFINE_integer('shards', 8, 'Shards per split (four .npy arrays each).')


def main(argv) -> None:
  del argv
  from data import pipeline, pretokenize  # pylint: disable=import-outside-toplevel
  from data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel

  config = _CONFIG.value
  if config.data.source == 'pretokenized':
    raise SystemExit('config.data.source is already pretokenized; name the source to read.')
  if _SHARDS.value < 1:
    raise SystemExit(f'--shards={_SHARDS.value} must be positive.')
  try:
    train = pipeline.load_documents(config.data, 'train')
    tokenizer = tokenizer_lib.load_or_train(
        config.data, None, (train[i] for i in range(len(train))))
    metadata = pretokenize.write(config.data, _OUTPUT.value, _SPLITS.value, _SHARDS.value,
                                 tokenizer, pipeline.load_documents)
  except (ValueError, FileNotFoundError) as error:  # bad settings, missing corpus files
    raise SystemExit(f'pretokenize: {error}') from None
  except OSError as error:  # an unwritable or full --output
    raise SystemExit(f'pretokenize: {error} (while writing --output={_OUTPUT.value}).') from None
  for split, info in metadata['splits'].items():
    print(f'{split}: {info["documents"]} documents, {info["tokens"]} tokens in '
          f'{len(info["shards"])} shards')
  print(f'Wrote {_OUTPUT.value} (tokenizer {tokenizer.path})')


if __name__ == '__main__':
  app.run(main)
