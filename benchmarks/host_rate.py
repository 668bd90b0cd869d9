"""Host tokens/s of a batch iterator per CPU second and per wall second, and what a device
consumes (imported without flags by the benchmarks and tests).

  python -m benchmarks.host_rate --config configs/bert.py:tiny --config.data.source=text \
      --config.data.train_files='../shared/data/gutenberg/*.txt' --workers 1,2

run on its own, times the on-the-fly pipeline of each format and sequence length under each
`config.data.workers` count, the counts in turn for `--rounds` rounds (so machine load hits
all alike), and prints a JSON line per format, length and count with the median rates.
"""

from __future__ import annotations

import time
from typing import Any


def host_rate(iterator: Any, batches: int) -> dict[str, float]:
  """Tokens (all positions) and real tokens (segment_ids > 0) per CPU second of the process
  (every thread) over `batches` batches, after one untimed warm-up batch; and tokens per
  wall-clock second. `batching_thread_tokens_per_sec` counts only the CPU time of the thread
  that builds batches and `worker_thread_tokens_per_sec` only that of the tokenizing thread
  (config.data.workers > 1): the slower of the two bounds the rate once each has a core, which
  a loaded machine's wall clock cannot show (the record reader's own threads run beside)."""
  next(iterator)
  view = getattr(iterator, 'documents', None)
  worker = getattr(view, 'worker_seconds', None)
  start, wall, own = time.process_time(), time.perf_counter(), time.thread_time()
  tokens = real = 0
  for _ in range(batches):
    batch = next(iterator)
    tokens += batch['tokens'].size
    real += int((batch['segment_ids'] > 0).sum())
  own = time.thread_time() - own
  seconds, wall = time.process_time() - start, time.perf_counter() - wall
  rates = {'tokens_per_sec': tokens / seconds, 'real_tokens_per_sec': real / seconds,
           'wall_tokens_per_sec': tokens / wall, 'cpu_per_wall': seconds / wall,
           'batching_thread_tokens_per_sec': tokens / own}
  if worker is not None:  # the tokenizing thread of config.data.workers > 1
    rates['worker_thread_tokens_per_sec'] = tokens / max(view.worker_seconds - worker, 1e-9)
  return rates


HEADROOM = 3.0  # host tokens/s per core over what the device consumes, for a pipeline that keeps up


def parse_consumes(entries: list[str]) -> dict[tuple[str, int], float]:
  """{(format, seq_len): device tokens/s} of FORMAT:SEQ=TOKENS_PER_SEC entries; a malformed
  one is a one-line ValueError."""
  rates = {}
  for entry in entries:
    try:
      key, rate = entry.split('=')
      name, seq_len = key.split(':')
      rates[(name, int(seq_len))] = float(rate)
    except ValueError:
      raise ValueError(f'--consumes={entry!r} is not FORMAT:SEQ=TOKENS_PER_SEC, e.g. '
                       'packed:1024=600000.') from None
  return rates


def main(argv) -> None:
  """Rates of the on-the-fly pipeline per format, length and worker count (see module doc)."""
  del argv
  import json  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel

  import numpy as np  # pylint: disable=import-outside-toplevel
  from absl import flags  # pylint: disable=import-outside-toplevel

  from data import formats, pipeline, reader  # pylint: disable=import-outside-toplevel
  from data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel

  values = flags.FLAGS
  config = values.config
  train = pipeline.load_documents(config.data, 'train')
  tokenizer = tokenizer_lib.load_or_train(config.data, None, (train[i] for i in range(len(train))))
  workers = [int(count) for count in values.workers]
  for seq_len in map(int, values.seq_lens):
    for name in values.formats:
      fmt = formats.get(name)(tokenizer.vocab, seq_len, config.data)
      iterators = {count: reader.ExampleIterator(
          fmt, pipeline.tokenized_view(train, tokenizer, count, fmt.unit),
          local_batch_size=values.batch, seed=0) for count in workers}
      rounds: dict[int, list[dict[str, float]]] = {count: [] for count in workers}
      load = os.getloadavg()
      for _ in range(values.rounds):
        for count, iterator in iterators.items():
          rounds[count].append(host_rate(iterator, values.batches))
      for count in workers:
        line = {key: float(np.median([r[key] for r in rounds[count]])) for key in rounds[count][0]}
        print(json.dumps({'format': name, 'seq_len': seq_len, 'workers': count,
                          'batch': values.batch, 'batches': values.batches,
                          'rounds': values.rounds, 'cores': os.cpu_count(),
                          'load_average': [round(x, 1) for x in load], **line}), flush=True)


if __name__ == '__main__':
  from absl import app, flags as absl_flags  # pylint: disable=ungrouped-imports
  from ml_collections import config_flags

  config_flags.DEFINE_config_file('config', 'configs/bert.py:tiny', 'Config[:preset].')
  absl_flags.DEFINE_list('workers', ['1', '2'], 'config.data.workers counts to time.')
  absl_flags.DEFINE_list('formats', ['packed', 'sentence_pairs'], 'Formats to time.')
  absl_flags.DEFINE_list('seq_lens', ['128', '512'], 'Sequence lengths.')
  absl_flags.DEFINE_integer('batch', 32, 'Rows per batch.')
  absl_flags.DEFINE_integer('batches', 50, 'Timed batches per count and round.')
  absl_flags.DEFINE_integer('rounds', 3, 'Rounds of the counts in turn; medians reported.')
  app.run(main)
