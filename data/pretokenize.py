"""Writing pre-tokenized shards: a source's documents tokenized once into ArrayRecord files.

Each record holds one document's ids and its sentences' ids (see
data/sources/pretokenized.py); `metadata.json` holds the corpus and tokenizer fingerprints,
the cleaning counts and the shard names, and `tokenizer.model` is copied alongside. Called by
tools/pretokenize.py.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from typing import Any

from data.formats.pairs import split_sentences
from data.sources import pretokenized
from data.sources.documents import corpus_fingerprint
from data.tokens import tokenizer_fingerprint

BATCH_DOCUMENTS = 256  # documents per batched tokenizer call


def write_split(documents: Sequence[str], tokenizer: Any, directory: str, split: str,
                num_shards: int) -> dict[str, Any]:
  """Writes `split`'s documents as `num_shards` ArrayRecord files; returns its metadata."""
  from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel

  count = len(documents)
  num_shards = max(1, min(num_shards, count))
  per_shard = math.ceil(count / num_shards)
  shards, tokens = [], 0
  for shard in range(num_shards):
    name = f'{split}-{shard:05d}-of-{num_shards:05d}.array_record'
    writer = array_record_module.ArrayRecordWriter(os.path.join(directory, name),
                                                   'group_size:1')
    for start in range(shard * per_shard, min(count, (shard + 1) * per_shard), BATCH_DOCUMENTS):
      texts = [documents[i] for i in range(start, min(count, (shard + 1) * per_shard,
                                                      start + BATCH_DOCUMENTS))]
      document_ids = tokenizer.encode_batch(texts)
      for text, ids in zip(texts, document_ids):
        sentences = split_sentences(text)
        sentence_ids = tokenizer.encode_batch(sentences) if sentences else []
        writer.write(pretokenized.encode_record(ids, sentence_ids))
        tokens += len(ids)
    writer.close()
    shards.append(name)
  return {'documents': count, 'tokens': tokens, 'shards': shards,
          'corpus_fingerprint': corpus_fingerprint(documents),
          'cleaning': dict(getattr(documents, 'cleaning', {}) or {})}


def write(data_config: Any, directory: str, splits: Sequence[str], num_shards: int,
          tokenizer: Any, load_documents) -> dict[str, Any]:
  """Tokenizes `splits` of `config.data.source` into `directory`; returns the metadata."""
  os.makedirs(directory, exist_ok=True)
  target = os.path.join(directory, pretokenized.TOKENIZER)
  if os.path.abspath(tokenizer.path) != os.path.abspath(target):
    shutil.copyfile(tokenizer.path, target)
  metadata = {'version': pretokenized.FORMAT_VERSION,
              'tokenizer_fingerprint': tokenizer_fingerprint(tokenizer.encode),
              'source': data_config.source,
              'splits': {split: write_split(load_documents(data_config, split), tokenizer,
                                            directory, split, num_shards) for split in splits}}
  temporary = os.path.join(directory, pretokenized.METADATA + '.tmp')
  with open(temporary, 'w', encoding='utf-8') as f:
    json.dump(metadata, f, indent=2)
  os.replace(temporary, os.path.join(directory, pretokenized.METADATA))
  return metadata
