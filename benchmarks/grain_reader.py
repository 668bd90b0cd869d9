"""grain against the project's reader: host tokens/s per core, saved state and exact resume.

  taskset -c 1 python -m benchmarks.grain_reader --config configs/bert.py:tiny \
      --config.data.source=text --config.data.train_files='corpus/*.txt' --batches 100

On the same documents and tokenizer, builds this process's iterator through
data/pipeline.py and an equivalent grain pipeline: a random-access source of documents, this
process's shard (`[p::n]`, as the reader's i % n == p), a global shuffle reseeded every epoch
(`shuffle(seed).repeat()`), tokenization in a grain `map`, the same format and `batch`.

- packed: grain's own `ConcatThenSplitIterDataset` packs the [bos] ids [eos] documents into
  windows. Its segment ids and positions follow the same rules as data/formats/packed.py
  (unshuffled, the batches are identical), and its state holds no tokens: it replays from
  the last point where no window was part-filled.
- sentence_pairs, sentence_order_pairs: grain has no pair construction, so a small
  `IterDataset` adapter runs the project's own builder (data/formats/pairs.py) on the
  documents grain reads; its state is grain's position plus the builder's.

Runs one process; pin it to one core (`taskset -c 1`) so CPU time is per core. For every
case and variant, prints a JSON line: tokens/s and real tokens/s (segment_ids > 0) over
`--batches` batches after one warm-up batch, the JSON state's size and the CPU time to save
and to restore it, whether a restored iterator yields exactly the next batch, and (for
grain) whether the unshuffled stream equals the project's. grain is not a dependency of the
project: `pip install grain` to run this.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault('OMP_NUM_THREADS', '1')

from absl import app, flags  # pylint: disable=wrong-import-position
from ml_collections import config_flags  # pylint: disable=wrong-import-position

from benchmarks import grain_pipeline  # pylint: disable=wrong-import-position

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/bert.py:tiny', 'Config[:preset].')
_BATCHES = flags.DEFINE_integer('batches', 100, 'Timed batches per case and variant.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 32, 'Examples per batch.')
_CASES = flags.DEFINE_list('cases', ['packed:128', 'packed:512', 'sentence_pairs:128'],
                           'format:seq_len pairs to measure.')
_VARIANTS = flags.DEFINE_list(
    'variants', ['project', 'project_per_text', 'grain', 'grain_batched'],
    'project: data/pipeline.py (batched encode, the default); project_per_text: one encode '
    'call per text; grain: one encode call per document in a grain map; grain_batched: '
    'grain maps batches of documents to one encode call (packed only).')
_GRAIN_THREADS = flags.DEFINE_integer(
    'grain_threads', 0, 'grain ReadOptions.num_threads (grain defaults to 16; 0 reads in the '
    'calling thread, as the project does).')
_CHECK_BATCHES = flags.DEFINE_integer(
    'check_batches', 10, 'Unshuffled batches compared between grain and the project.')
_PROCESS_INDEX = flags.DEFINE_integer('process_index', 0, 'This process of --process_count.')
_PROCESS_COUNT = flags.DEFINE_integer('process_count', 1, 'Processes the corpus is sharded over.')


def main(argv) -> None:
  del argv
  from data import pipeline  # pylint: disable=import-outside-toplevel
  from data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel

  grain = grain_pipeline.require_grain()
  config = _CONFIG.value
  train = pipeline.load_documents(config.data, 'train')
  tokenizer = tokenizer_lib.load_or_train(config.data, None, (train[i] for i in range(len(train))))
  print(json.dumps({'grain': grain.__version__, 'documents': len(train),
                    'vocab_size': tokenizer.size, 'grain_threads': _GRAIN_THREADS.value}))
  shard = dict(process_index=_PROCESS_INDEX.value, process_count=_PROCESS_COUNT.value,
               batch_size=_BATCH_SIZE.value)
  for case in _CASES.value:
    data_format, seq_len = case.split(':')
    config.seq_len = int(seq_len)
    makers = grain_pipeline.makers(config, data_format, train, tokenizer, shard,
                                     _GRAIN_THREADS.value)
    reference = None
    for variant in _VARIANTS.value:
      if variant not in makers:
        raise app.UsageError(f'--variants: unknown {variant!r}; choose from {sorted(makers)}.')
      if variant == 'grain_batched' and data_format != 'packed':
        continue  # pairs tokenize each document's sentences in one call already
      iterator = makers[variant]()
      result = {'format': data_format, 'seq_len': config.seq_len, 'variant': variant,
                **grain_pipeline.throughput(iterator, _BATCHES.value),
                **grain_pipeline.state_costs(iterator, makers[variant])}
      if variant.startswith('grain') and _CHECK_BATCHES.value:
        if reference is None:
          project = makers['project'](shuffle=False)
          reference = [next(project) for _ in range(_CHECK_BATCHES.value)]
        unshuffled = makers[variant](shuffle=False)
        result['unshuffled_same_as_project'] = all(
            grain_pipeline.same_batch(next(unshuffled), want) for want in reference)
      print(json.dumps(result), flush=True)


if __name__ == '__main__':
  app.run(main)
