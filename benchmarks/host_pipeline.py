"""Host pipeline throughput per format, on the fly and from pre-tokenized shards, per core.

  python -m benchmarks.host_pipeline --config.data.source=text \
      --config.data.train_files='../shared/data/gutenberg/*.txt'

Runs one process pinned to one thread (so tokens/s is per core), reads `--batches` batches of
each format after one warm-up batch, and prints JSON lines: format, path (on_the_fly or
pretokenized), tokens/s (all positions) and real tokens/s (segment_ids > 0), and, for a format
and length named in --consumes, the ratio to what the device consumes (at least 3 keeps up).
Also times pair construction per document at two corpus sizes (the ratio shows it is linear).
The shards go to --output, by default a new private temporary folder removed at the end (a
fixed name under /tmp would let another local user plant links there).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

os.environ.setdefault('OMP_NUM_THREADS', '1')

import ml_collections  # pylint: disable=wrong-import-position
from absl import app, flags  # pylint: disable=wrong-import-position
from ml_collections import config_flags  # pylint: disable=wrong-import-position

from benchmarks.host_rate import HEADROOM, host_rate, parse_consumes  # pylint: disable=wrong-import-position

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/bert.py:tiny', 'Config[:preset].')
_OUTPUT = flags.DEFINE_string('output', '', 'Shard directory (default: a new private '
                              'temporary one, removed at the end).')
_BATCHES = flags.DEFINE_integer('batches', 200, 'Timed batches per format and path.')
_SEQ_LENS = flags.DEFINE_list('seq_lens', ['128', '512'], 'Sequence lengths.')
_CONSUMES = flags.DEFINE_list(
    'consumes', [], 'What a device consumes, as FORMAT:SEQ=TOKENS_PER_SEC (e.g. '
    'packed:1024=600000, from benchmarks/throughput.py); each matching line then gets the ratio '
    'host_to_device, which should be at least 3.')

def output_dir(flag: str) -> tuple[str, bool]:
  """The shard folder and whether it is a temporary one to remove: --output, else a new
  mode-0700 folder (tempfile.mkdtemp)."""
  return (flag, False) if flag else (tempfile.mkdtemp(prefix='host_pipeline_pretok-'), True)


def main(argv) -> None:
  del argv
  output, temporary = output_dir(_OUTPUT.value)
  try:
    measure(output)
  finally:
    if temporary:
      shutil.rmtree(output, ignore_errors=True)


def measure(output: str) -> None:
  """Writes the shards to `output` and prints every measurement as a JSON line."""
  from data import formats, pipeline, pretokenize, reader  # pylint: disable=import-outside-toplevel
  from data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  from data.sources import pretokenized  # pylint: disable=import-outside-toplevel
  from data.tokens import EncodedDocuments  # pylint: disable=import-outside-toplevel

  config = _CONFIG.value
  try:
    consumes = parse_consumes(_CONSUMES.value)
  except ValueError as error:
    raise app.UsageError(str(error)) from None
  train = pipeline.load_documents(config.data, 'train')
  tokenizer = tokenizer_lib.load_or_train(config.data, None, (train[i] for i in range(len(train))))
  start = time.process_time()
  pretokenize.write(config.data, output, ['train'], 8, tokenizer, pipeline.load_documents)
  print(json.dumps({'pretokenize_cpu_seconds': time.process_time() - start,
                    'documents': len(train)}))
  stored = pretokenized.load(ml_collections.ConfigDict({'pretokenized_dir': output}),
                             'train')
  for seq_len in map(int, _SEQ_LENS.value):
    for name in formats.names():
      fmt = formats.get(name)(tokenizer.vocab, seq_len, config.data)
      views = {'on_the_fly': pipeline.tokenized_view(train, tokenizer),  # as train.py reads
               'pretokenized': stored}
      for path, view in views.items():
        iterator = reader.ExampleIterator(fmt, view, local_batch_size=32, seed=0)
        line = {'format': name, 'seq_len': seq_len, 'path': path,
                **host_rate(iterator, _BATCHES.value)}
        device = consumes.get((name, seq_len))
        if device:  # the device reads padding positions too, so all positions count
          line.update(device_tokens_per_sec=device,
                      host_to_device=line['tokens_per_sec'] / device,
                      keeps_up=line['tokens_per_sec'] >= HEADROOM * device)
        print(json.dumps(line))
  # Pair construction per document at two corpus sizes (documents repeated to grow it).
  texts = [train[i] for i in range(len(train))]
  for copies in (1, 8):
    corpus = texts * copies
    fmt = formats.get('sentence_pairs')(tokenizer.vocab, 128, config.data)
    iterator = reader.ExampleIterator(fmt, EncodedDocuments(corpus, tokenizer.encode),
                                      local_batch_size=32, seed=0)
    result = host_rate(iterator, _BATCHES.value)
    print(json.dumps({'pair_construction_documents': len(corpus), **result}))


if __name__ == '__main__':
  app.run(main)
