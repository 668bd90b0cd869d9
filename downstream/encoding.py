"""Task examples -> fixed-length token arrays the shared Transformer reads, on the host.

Bidirectional models read BERT's layout, `[CLS] a [SEP] (b [SEP])`, and pool the first token;
causal models read `[bos] a ([SEP] b) [eos]` and pool the last real token, which has seen
everything. Token types (A = 0, B = 1) are filled for models that have them. Extractive QA
splits a long context into windows `start question sep context end` whose context parts start
`doc_stride` tokens apart (BERT's run_squad), and keeps each context token's character span so
a predicted token span maps back to text. A training window that does not hold the whole answer
targets position 0 (start = end = 0), as in run_squad: "no answer here".
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import sentencepiece as spm
from etils import epath

from data.vocab import Vocab


@dataclasses.dataclass(frozen=True)
class Layout:
  """The special ids framing an input: start (CLS or bos), separator, end (SEP or eos)."""

  causal: bool
  start_id: int
  sep_id: int
  end_id: int
  pad_id: int


def layout_for(vocab: Vocab, causal: bool) -> Layout:
  """BERT's [CLS]/[SEP] for bidirectional models (bos/eos where the vocabulary lacks them),
  bos/[SEP]/eos for causal ones."""
  sep = vocab.sep_id if vocab.sep_id >= 0 else vocab.eos_id
  if causal:
    return Layout(True, vocab.bos_id, sep, vocab.eos_id, vocab.pad_id)
  start = vocab.cls_id if vocab.cls_id >= 0 else vocab.bos_id
  end = vocab.sep_id if vocab.sep_id >= 0 else vocab.eos_id
  return Layout(False, start, sep, end, vocab.pad_id)


def _truncate_pair(a: list[int], b: list[int], budget: int) -> tuple[list[int], list[int]]:
  """Drops tokens from the end of the longer side until both fit `budget` (longest first)."""
  a, b = list(a), list(b)
  while len(a) + len(b) > budget:
    if len(a) >= len(b):
      a.pop()
    else:
      b.pop()
  return a, b


def _empty(count: int, seq_len: int) -> dict[str, np.ndarray]:
  zeros = np.zeros((count, seq_len), np.int32)
  return {'tokens': zeros.copy(), 'positions': zeros.copy(), 'segment_ids': zeros.copy(),
          'token_types': zeros.copy()}


def _place(arrays: dict[str, np.ndarray], row: int, ids: Sequence[int], types: Sequence[int],
           pad_id: int) -> None:
  n = len(ids)
  arrays['tokens'][row] = pad_id
  arrays['tokens'][row, :n] = ids
  arrays['positions'][row, :n] = np.arange(n)
  arrays['segment_ids'][row, :n] = 1
  arrays['token_types'][row, :n] = types


def encode_texts(tokenizer, examples: Sequence[dict[str, Any]], seq_len: int, layout: Layout,
                 regression: bool = False) -> dict[str, np.ndarray]:
  """Single texts or pairs plus their labels: tokens, positions, segment_ids, token_types, label."""
  firsts = tokenizer.encode_batch([e['text'] for e in examples])
  has_pair = bool(examples) and 'text_pair' in examples[0]
  seconds = tokenizer.encode_batch([e['text_pair'] for e in examples]) if has_pair else None
  arrays = _empty(len(examples), seq_len)
  for row, first in enumerate(firsts):
    if has_pair:
      a, b = _truncate_pair(first, seconds[row], seq_len - 3)
      ids = [layout.start_id, *a, layout.sep_id, *b, layout.end_id]
      types = [0] * (len(a) + 2) + [1] * (len(b) + 1)
    else:
      a = first[:seq_len - 2]
      ids, types = [layout.start_id, *a, layout.end_id], [0] * (len(a) + 2)
    _place(arrays, row, ids, types, layout.pad_id)
  labels = [e['label'] for e in examples]
  arrays['label'] = np.asarray(labels, np.float32 if regression else np.int32)
  return arrays


class PieceOffsets:
  """Token ids with each piece's character span, from the tokenizer's own model file."""

  def __init__(self, tokenizer):
    self._sp = spm.SentencePieceProcessor()
    self._sp.LoadFromSerializedProto(epath.Path(tokenizer.path).read_bytes())

  def __call__(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    mapping = self._sp.EncodeAsOffsetMapping(text)
    return list(mapping['ids']), [tuple(o) for o in mapping['offsets']]


@dataclasses.dataclass
class QaWindows:
  """The windows of a QA split: arrays for the model and what decoding needs per window.

  arrays: tokens, positions, segment_ids, token_types, context_mask (1 on context tokens),
    start / end (the answer's token positions in the window, 0 when it is not inside).
  example_index[w]: the example window w comes from.
  offsets[w][p]: (char begin, char end) of the context token at window position p, or None.
  """

  arrays: dict[str, np.ndarray]
  example_index: np.ndarray
  offsets: list[list[tuple[int, int] | None]]


def answer_token_span(offsets: Sequence[tuple[int, int]], start: int, length: int
                      ) -> tuple[int, int]:
  """First and last context token overlapping the characters [start, start + length)."""
  end = start + max(length, 1)
  first = next((k for k, (_, e) in enumerate(offsets) if e > start), len(offsets) - 1)
  last = max((k for k, (b, _) in enumerate(offsets) if b < end), default=first)
  return first, max(first, last)


def encode_qa(tokenizer, examples: Sequence[dict[str, Any]], seq_len: int, layout: Layout, *,
              doc_stride: int, max_query_tokens: int) -> QaWindows:
  """Every example as one or more windows over its context (see the module docstring)."""
  pieces = PieceOffsets(tokenizer)
  questions = tokenizer.encode_batch([e['question'] for e in examples])
  rows, example_index, all_offsets = [], [], []
  for index, example in enumerate(examples):
    question = questions[index][:max_query_tokens]
    context_ids, context_offsets = pieces(example['context'])
    room = seq_len - len(question) - 3
    if room < 1:
      raise ValueError(f'seq_len={seq_len} leaves no room for the context after a {len(question)}'
                       '-token question: raise config.seq_len or lower config.max_query_tokens.')
    answer = example['answers'][0] if example.get('answers') else None
    answer_span = (answer_token_span(context_offsets, answer['start'], len(answer['text']))
                   if answer and context_offsets else None)
    begin = 0
    while True:
      chunk = range(begin, min(begin + room, len(context_ids)))
      prefix = [layout.start_id, *question, layout.sep_id]
      ids = prefix + [context_ids[k] for k in chunk] + [layout.end_id]
      types = [0] * len(prefix) + [1] * (len(chunk) + 1)
      offsets = [None] * len(prefix) + [context_offsets[k] for k in chunk] + [None]
      start = end = 0
      if answer_span and chunk and chunk[0] <= answer_span[0] and answer_span[1] < chunk.stop:
        start, end = (len(prefix) + answer_span[0] - chunk[0], len(prefix) + answer_span[1] - chunk[0])
      rows.append((ids, types, start, end))
      example_index.append(index)
      all_offsets.append(offsets + [None] * (seq_len - len(offsets)))
      if chunk.stop >= len(context_ids):
        break
      begin += min(doc_stride, room)
  arrays = _empty(len(rows), seq_len)
  arrays['context_mask'] = np.zeros((len(rows), seq_len), np.int32)
  arrays['start'] = np.zeros(len(rows), np.int32)
  arrays['end'] = np.zeros(len(rows), np.int32)
  for row, (ids, types, start, end) in enumerate(rows):
    _place(arrays, row, ids, types, layout.pad_id)
    arrays['context_mask'][row] = [o is not None for o in all_offsets[row]]
    arrays['start'][row], arrays['end'][row] = start, end
  return QaWindows(arrays, np.asarray(example_index, np.int32), all_offsets)


def decode_spans(start_logits: np.ndarray, end_logits: np.ndarray, windows: QaWindows,
                 contexts: Sequence[str], *, max_answer_tokens: int = 30, n_best: int = 20
                 ) -> list[str]:
  """Each example's best answer text over all its windows: the context span (start <= end,
  at most `max_answer_tokens` long, both ends on context tokens) with the highest
  start + end logit."""
  best: dict[int, tuple[float, str]] = {}
  for w in range(len(windows.example_index)):
    offsets = windows.offsets[w]
    valid = np.array([o is not None for o in offsets])
    starts = np.where(valid, start_logits[w], -np.inf)
    ends = np.where(valid, end_logits[w], -np.inf)
    candidates_s = [int(i) for i in np.argsort(-starts)[:n_best] if valid[i]]
    candidates_e = [int(i) for i in np.argsort(-ends)[:n_best] if valid[i]]
    example = int(windows.example_index[w])
    for s in candidates_s:
      for e in candidates_e:
        if e < s or e - s + 1 > max_answer_tokens:
          continue
        score = float(starts[s] + ends[e])
        if example not in best or score > best[example][0]:
          text = contexts[example][offsets[s][0]:offsets[e][1]].strip()
          best[example] = (score, text)
  return [best.get(i, (0.0, ''))[1] for i in range(len(contexts))]


def encode_instructions(tokenizer, records: Sequence[dict[str, str]], seq_len: int, vocab: Vocab
                        ) -> dict[str, np.ndarray]:
  """`[bos] prompt response [eos]` with next-token targets weighted 1 on response tokens only
  (the eos included, so the model learns to stop). Long prompts lose their beginning first."""
  prompts = tokenizer.encode_batch([r['prompt'] for r in records])
  responses = tokenizer.encode_batch([r['response'] for r in records])
  arrays = _empty(len(records), seq_len)
  arrays['targets'] = np.zeros((len(records), seq_len), np.int32)
  arrays['weights'] = np.zeros((len(records), seq_len), np.float32)
  for row, (prompt, response) in enumerate(zip(prompts, responses)):
    response = [*response, vocab.eos_id][:seq_len - 2]
    prompt = prompt[max(0, len(prompt) - (seq_len - 1 - len(response))):]
    ids = [vocab.bos_id, *prompt, *response]
    _place(arrays, row, ids, [0] * len(ids), vocab.pad_id)
    arrays['targets'][row, :len(ids) - 1] = ids[1:]
    first_target = len(prompt)  # the position whose next token is the first response token
    arrays['weights'][row, first_target:len(ids) - 1] = 1.0
  return arrays
