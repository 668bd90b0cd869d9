"""Tokenized views of documents, what formats read: whole-document ids or each sentence's ids.

`EncodedDocuments` tokenizes text on the fly, lazily: the reader's upcoming documents are read
in one batched call where the documents have `read` (a record source read one record at a
time costs several times more CPU per record) and encoded in one call where the tokenizer has
`encode_batch`; any other document (NSP's random next segment) is read on its own. The
pretokenized source (data/sources/pretokenized.py) gives the same view from stored ids. Both
carry a `fingerprint()` of corpus and tokenizer, which the reader saves with its position.
`AheadEncodedDocuments` (config.data.workers > 1) reads and tokenizes the next windows of
documents in a background thread while the batching thread packs; SentencePiece releases the
GIL while it encodes. Ids are a function of the document index alone, so the batches, and
what a saved position restores, do not depend on the worker count.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from data.formats.pairs import split_sentences
from data.sources.documents import corpus_fingerprint, sample_indices

# Text whose encoding identifies a tokenizer: prose, code, digits, whitespace and non-Latin.
_PROBE = ('The quick brown fox jumps over the lazy dog. Return the number of items.\n\n'
          '    >>> len([1, 2, 3])\n    3\n\tdef f(x): return x ** 2  # 2026-11-29\n'
          'naïve café — 日本語 😀 ﬁ <unk> [CLS] \r\n  two  spaces')


def tokenizer_fingerprint(encode: Callable[[str], Sequence[int]],
                          fallback_texts: Sequence[str] = ()) -> str:
  """A short hash of how `encode` tokenizes a fixed probe text (or, for an encoder that
  cannot read arbitrary text, such as a test's word table, `fallback_texts`)."""
  digest = hashlib.sha256()
  try:
    digest.update(np.asarray(encode(_PROBE), np.int64).tobytes())
  except (KeyError, ValueError, IndexError):
    for text in fallback_texts:
      digest.update(np.asarray(encode(text), np.int64).tobytes())
  return digest.hexdigest()[:16]


class EncodedSentences(Sequence):
  """The sentences of one document, each tokenized on first access.

  One `encode` call per sentence: a document's few sentences in one batched call cost about
  18% more CPU per sentence (7.5 us against 6.4 us, BENCHMARKS.md, host pipeline).
  """

  def __init__(self, texts: list[str], encode):
    self._texts = texts
    self._encode = encode
    self._ids: list[np.ndarray | None] = [None] * len(texts)

  def __len__(self) -> int:
    return len(self._texts)

  def __getitem__(self, index: int) -> np.ndarray:
    ids = self._ids[index]
    if ids is None:
      ids = self._ids[index] = np.asarray(self._encode(self._texts[index]), np.int32)
    return ids


class EncodedDocuments:
  """Documents tokenized on the fly by `encode` (ids without bos/eos).

  `prefetch` reads the documents about to be read in one call and keeps their texts; the
  first of them read as a whole document encodes all of them in one `encode_batch` call, and
  one read as sentences takes its text. Each is kept until read, so what any index gives never
  depends on the window it came in.
  """

  def __init__(self, documents: Sequence[str], encode: Callable[[str], Sequence[int]],
               encode_batch: Callable[[list[str]], list[Sequence[int]]] | None = None):
    self.texts = documents
    self._encode = encode
    self._encode_batch = encode_batch
    self._read = getattr(documents, 'read', None)
    self._texts_ahead: dict[int, str] = {}
    self._ids_ahead: dict[int, np.ndarray] = {}
    self.name = getattr(documents, 'name', 'the documents')

  def __len__(self) -> int:
    return len(self.texts)

  def _text(self, index: int) -> str:
    text = self._texts_ahead.pop(index, None)
    return self.texts[index] if text is None else text

  def document(self, index: int) -> np.ndarray:
    ids = self._ids_ahead.pop(index, None)
    if ids is None and self._encode_batch is not None and index in self._texts_ahead:
      ahead = list(self._texts_ahead)
      for i, encoded in zip(ahead, self._encode_batch([self._texts_ahead[i] for i in ahead])):
        self._ids_ahead[i] = np.asarray(encoded, np.int32)
      self._texts_ahead.clear()
      ids = self._ids_ahead.pop(index)
    if ids is None:
      ids = np.asarray(self._encode(self._text(index)), np.int32)
    return ids

  def sentences(self, index: int) -> EncodedSentences:
    return EncodedSentences(split_sentences(self._text(index)), self._encode)

  def wants_prefetch(self) -> bool:
    """Whether a batch would be cheaper and every prefetched document has been read."""
    batched = self._read is not None or self._encode_batch is not None
    return batched and not self._texts_ahead and not self._ids_ahead

  def prefetch(self, indices: Sequence[int]) -> None:
    """Reads the documents about to be read in one batched call (kept until read)."""
    indices = [int(i) for i in indices if int(i) not in self._texts_ahead
               and int(i) not in self._ids_ahead]
    if not indices:
      return
    texts = self._read(indices) if self._read is not None else [self.texts[i] for i in indices]
    self._texts_ahead.update(zip(indices, texts))

  def fingerprint(self) -> dict[str, Any]:
    samples = [self.texts[i] for i in sample_indices(len(self.texts), 4)]
    return {'corpus': corpus_fingerprint(self.texts), 'documents': len(self.texts),
            'tokenizer': tokenizer_fingerprint(self._encode, samples)}


class AheadEncodedDocuments(EncodedDocuments):
  """Documents read and tokenized `prefetch_chunks - 1` windows ahead in a background thread.

  The reader asks for `prefetch_chunks` windows of `chunk` upcoming indices at a time: the
  first is waited for (it was usually submitted one window earlier), the rest are submitted.
  A window's texts are read in one call and encoded in one `encode_batch` call on
  `workers - 1` SentencePiece threads, per document (unit 'document') or every sentence of
  the window (unit 'sentences'). Reads of the underlying documents are serialised by a lock.
  """

  prefetch_chunks = 2

  def __init__(self, documents: Sequence[str], encode: Callable[[str], Sequence[int]],
               encode_batch: Callable[[list[str], int], list[Sequence[int]]], *,
               workers: int, unit: str, chunk: int):
    super().__init__(documents, encode, None)
    if unit not in ('document', 'sentences'):
      raise ValueError(f'Unknown document unit {unit!r}: document or sentences.')
    self._encode_threads = max(workers - 1, 1)
    self._encode_window = encode_batch
    self._unit = unit
    self._chunk = chunk
    self._lock = threading.Lock()
    self._sentences_ahead: dict[int, list[np.ndarray]] = {}
    self._futures: dict[tuple[int, ...], concurrent.futures.Future] = {}
    self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='tokenize')
    self.worker_seconds = 0.0  # CPU seconds of the background thread (benchmarks/host_rate.py)

  def _text(self, index: int) -> str:
    with self._lock:
      return self.texts[index]

  def _in_background(self, indices: tuple[int, ...]) -> dict[int, Any]:
    start = time.thread_time()
    try:
      return self._window(indices)
    finally:
      self.worker_seconds += time.thread_time() - start

  def _window(self, indices: tuple[int, ...]) -> dict[int, Any]:
    """{index: ids} (or {index: [sentence ids]}) of one window, read and encoded at once."""
    with self._lock:
      texts = (self._read(list(indices)) if self._read is not None
               else [self.texts[i] for i in indices])
    if self._unit == 'document':
      encoded = self._encode_window(list(texts), self._encode_threads)
      return {i: np.asarray(ids, np.int32) for i, ids in zip(indices, encoded)}
    split = [split_sentences(text) for text in texts]
    encoded = iter(self._encode_window([s for doc in split for s in doc], self._encode_threads))
    return {i: [np.asarray(next(encoded), np.int32) for _ in doc] for i, doc in zip(indices, split)}

  def document(self, index: int) -> np.ndarray:
    ids = self._ids_ahead.pop(index, None)
    return np.asarray(self._encode(self._text(index)), np.int32) if ids is None else ids

  def sentences(self, index: int) -> Sequence[np.ndarray]:
    ids = self._sentences_ahead.pop(index, None)
    if ids is None:
      return EncodedSentences(split_sentences(self._text(index)), self._encode)
    return ids

  def wants_prefetch(self) -> bool:
    return not self._ids_ahead and not self._sentences_ahead

  def prefetch(self, indices: Sequence[int]) -> None:
    windows = [tuple(int(i) for i in indices[start:start + self._chunk])
               for start in range(0, len(indices), self._chunk)]
    if not windows:
      return
    future = self._futures.pop(windows[0], None)
    # Windows no longer ahead (a new epoch, a restored position) are dropped unread.
    self._futures = {key: value for key, value in self._futures.items() if key in windows[1:]}
    for window in windows[1:]:
      if window not in self._futures:
        self._futures[window] = self._executor.submit(self._in_background, window)
    ahead = self._window(windows[0]) if future is None else future.result()
    (self._ids_ahead if self._unit == 'document' else self._sentences_ahead).update(ahead)

  def fingerprint(self) -> dict[str, Any]:
    with self._lock:
      return super().fingerprint()
