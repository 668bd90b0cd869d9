"""Downstream metrics against hand computations, and QA span decoding across stride windows."""

import math

import numpy as np
import pytest

from downstream import encoding, metrics


def test_classification_metrics_match_hand_counts():
  labels = np.array([1, 1, 1, 0, 0, 0, 1, 0])
  predictions = np.array([1, 1, 0, 0, 1, 0, 1, 0])
  # tp=3 (rows 0,1,6), fp=1 (row 4), fn=1 (row 2), tn=3
  assert metrics.accuracy(predictions, labels) == 6 / 8
  assert metrics.binary_f1(predictions, labels) == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
  mcc = (3 * 3 - 1 * 1) / math.sqrt((3 + 1) * (3 + 1) * (3 + 1) * (3 + 1))
  assert metrics.matthews(predictions, labels) == pytest.approx(mcc)
  assert metrics.matthews(np.ones(4, int), np.array([0, 1, 0, 1])) == 0.0  # undefined -> 0
  # macro F1 over three classes: class 0 has tp 1, fp 1, fn 1 -> 1/2; class 1 has no tp -> 0;
  # class 2 -> 1
  three_labels, three_predictions = np.array([0, 0, 1, 2]), np.array([0, 1, 0, 2])
  assert metrics.macro_f1(three_predictions, three_labels) == pytest.approx((1 / 2 + 0 + 1) / 3)


def test_correlations_match_hand_values():
  x, y = np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 4.0, 5.0, 9.0])
  xc, yc = x - 2.5, y - 5.0
  assert metrics.pearson(x, y) == pytest.approx((xc @ yc) / math.sqrt((xc @ xc) * (yc @ yc)))
  assert metrics.spearman(x, y) == pytest.approx(1.0)  # monotone
  # ties share their average rank: ranks of [1, 2, 2, 3] are [1, 2.5, 2.5, 4]
  ties = np.array([1.0, 2.0, 2.0, 3.0])
  ranks = np.array([1.0, 2.5, 2.5, 4.0])
  assert metrics.spearman(ties, np.array([4.0, 3.0, 2.0, 1.0])) == pytest.approx(
      metrics.pearson(ranks, np.array([4.0, 3.0, 2.0, 1.0])))
  assert metrics.pearson(np.ones(3), np.arange(3.0)) == 0.0


def test_squad_normalisation_exact_match_and_f1():
  assert metrics.normalize_answer('The  Eiffel-Tower!') == 'eiffeltower'
  assert metrics.normalize_answer('an apple, a pear') == 'apple pear'
  assert metrics.answer_exact('the Eiffel Tower.', 'Eiffel tower') == 1.0
  # prediction 'big red dog', truth 'the red dog barked': common {red, dog} = 2;
  # precision 2/3, recall 2/3 ('the' dropped: truth is red dog barked) -> F1 2/3
  assert metrics.answer_f1('big red dog', 'the red dog barked') == pytest.approx(2 / 3)
  scores = metrics.squad_scores(['red dog', 'cat'], [['the red dog', 'dog'], ['a dog']])
  assert scores['exact_match'] == pytest.approx(0.5)
  assert scores['f1'] == pytest.approx((1.0 + 0.0) / 2)
  # No gold answer (unanswerable): only an empty prediction matches, in both metrics.
  scores = metrics.squad_scores(['red dog', '', 'the'], [[], [], ['a dog']])
  assert scores == {'exact_match': pytest.approx(1 / 3), 'f1': pytest.approx(1 / 3)}


def test_span_decoding_across_stride_windows(monkeypatch):
  context = 'alpha beta gamma delta epsilon zeta eta theta'
  words = context.split()
  offsets = []
  position = 0
  for word in words:
    start = context.index(word, position)
    offsets.append((start, start + len(word)))
    position = start + len(word)

  class FakePieces:
    def __init__(self, tokenizer):
      del tokenizer

    def __call__(self, text):
      assert text == context
      return list(range(10, 10 + len(words))), offsets

  class FakeTokenizer:
    def encode_batch(self, texts):
      return [[7, 8] for _ in texts]  # a two-token question

  monkeypatch.setattr(encoding, 'PieceOffsets', FakePieces)
  layout = encoding.Layout(False, 4, 5, 5, 0)
  example = {'question': 'q', 'context': context, 'answers': [{'text': 'zeta eta', 'start': 31}]}
  # seq_len 10: [CLS] q q [SEP] + 5 context tokens + [SEP]; stride 3 -> windows at 0, 3
  windows = encoding.encode_qa(FakeTokenizer(), [example], 10, layout, doc_stride=3,
                               max_query_tokens=4)
  assert list(windows.example_index) == [0, 0]
  assert list(windows.arrays['tokens'][0]) == [4, 7, 8, 5, 10, 11, 12, 13, 14, 5]
  assert list(windows.arrays['tokens'][1]) == [4, 7, 8, 5, 13, 14, 15, 16, 17, 5]
  # 'zeta eta' = context tokens 5, 6: outside window 0, at positions 6, 7 of window 1
  assert (windows.arrays['start'][0], windows.arrays['end'][0]) == (0, 0)
  assert (windows.arrays['start'][1], windows.arrays['end'][1]) == (6, 7)
  # Window 0 prefers 'beta' weakly; window 1 scores 'zeta eta' higher, and its best end
  # before its best start ('delta' at 4) must not be chosen.
  start = np.full((2, 10), -5.0)
  end = np.full((2, 10), -5.0)
  start[0, 5], end[0, 5] = 1.0, 1.0  # 'beta': score 2
  start[1, 6], end[1, 7] = 3.0, 2.0  # 'zeta'..'eta': score 5
  end[1, 4] = 4.0  # 'delta', before the start: invalid with start 6
  start[1, 0] = end[1, 0] = 50.0  # [CLS] is not context
  texts = encoding.decode_spans(start, end, windows, [context])
  assert texts == ['zeta eta']
  start[0, 5], end[0, 5] = 4.0, 4.0  # now window 0's 'beta' scores 8, above 'zeta eta' (5)
  assert encoding.decode_spans(start, end, windows, [context]) == ['beta']
  # config.max_answer_tokens reaches the decoding: at 1 token 'zeta eta' cannot be chosen, and
  # 'delta' (start -5 + end 4) beats 'zeta' (3 - 5).
  from configs import finetune as finetune_config  # pylint: disable=import-outside-toplevel
  from downstream import finetune, runner  # pylint: disable=import-outside-toplevel
  from downstream.tasks.base import Task  # pylint: disable=import-outside-toplevel
  task = Task('qa', 'qa', {'train': [example], 'validation': [example]})
  split = finetune.EncodedSplit(windows.arrays, [example], windows)
  start[0, 5] = end[0, 5] = -5.0  # back to 'zeta eta' as the best span
  outputs = np.stack([start, end], axis=-1)
  assert finetune.score(task, split, outputs)['exact_match'] == 1.0
  config = finetune_config.get_config('squad_json')
  config.max_answer_tokens = 1
  short = runner._recipe(config).max_answer_tokens  # pylint: disable=protected-access
  scores = finetune.score(task, split, outputs, max_answer_tokens=short)
  assert encoding.decode_spans(start, end, windows, [context], max_answer_tokens=1) == ['delta']
  assert scores['exact_match'] == 0.0 and scores['f1'] == 0.0
  # A window without the answer targets position 0 ([CLS]), which the head leaves unmasked:
  # its loss is the cross-entropy over [CLS] and the context tokens, finite, by hand.
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from downstream import heads  # pylint: disable=import-outside-toplevel
  batch = {k: jnp.asarray(v) for k, v in windows.arrays.items()}
  hidden = jax.random.normal(jax.random.key(0), (2, 10, 8))
  head = heads.SpanHead()
  params = head.init(jax.random.key(1), hidden, batch, False)
  logits = np.asarray(head.apply(params, hidden, batch, False))
  allowed = [[0, 4, 5, 6, 7, 8]] * 2  # [CLS] and the five context tokens of each window
  for row in range(2):
    assert (logits[row, [1, 2, 3, 9]] == -1e9).all()
  hand = []
  for row, targets in enumerate([(0, 0), (6, 7)]):
    for side, target in enumerate(targets):
      values = logits[row, allowed[row], side].astype(np.float64)
      hand.append(np.log(np.exp(values).sum()) - logits[row, target, side])
  loss = float(heads.loss('qa', jnp.asarray(logits), batch))
  assert loss == pytest.approx(np.mean(hand), rel=1e-5) and loss < 10


def test_multiclass_matthews_and_macro_f1_with_absent_classes():
  # Confusion (rows truth, columns prediction) of labels [0, 1, 2, 0] vs predictions
  # [0, 2, 2, 1]: t = [2, 1, 1], p = [1, 1, 2], c = 2, s = 4:
  # (c s - t.p) / sqrt((s^2 - p.p)(s^2 - t.t)) = (8 - 5) / sqrt(10 * 10) = 0.3
  labels, predictions = np.array([0, 1, 2, 0]), np.array([0, 2, 2, 1])
  assert metrics.matthews(predictions, labels) == pytest.approx(0.3)
  # Class 3 only predicted (F1 0), class 2 only in the labels (F1 0), class 0: tp 2, fp 1,
  # fn 1 -> 4 / 6; the mean runs over the union {0, 2, 3} of classes, as sklearn's default
  # labels do (zero_division 0 never arises: each class there has a tp, fp or fn).
  labels, predictions = np.array([0, 0, 0, 2]), np.array([0, 0, 3, 0])
  assert metrics.macro_f1(predictions, labels) == pytest.approx((4 / 6 + 0 + 0) / 3)


def test_spans_map_back_to_non_ascii_text_and_repeated_spaces(tmp_path):
  from data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  from tests import downstream_helpers as helpers  # pylint: disable=import-outside-toplevel
  tokenizer = tokenizer_lib.Tokenizer(helpers.train_tokenizer(str(tmp_path / 'tok.model')))
  context = ('Café  apple, ñandú   river  mountain. 日本 ocean forest desert valley canyon '
             'island grape melon')
  layout = encoding.layout_for(tokenizer.vocab, causal=False)
  for answer in ['ñandú   river', 'river  mountain', '日本 ocean', 'Café', 'apple',
                 'island grape melon']:
    example = {'question': 'where', 'context': context,
               'answers': [{'text': answer, 'start': context.index(answer)}]}
    windows = encoding.encode_qa(tokenizer, [example], 16, layout, doc_stride=3,
                                 max_query_tokens=4)
    count = len(windows.example_index)
    assert count > 2
    start, end = np.full((count, 16), -1.0), np.full((count, 16), -1.0)
    for w in np.flatnonzero(windows.arrays['start'] > 0):
      start[w, windows.arrays['start'][w]] = end[w, windows.arrays['end'][w]] = 5.0
    assert encoding.decode_spans(start, end, windows, [context]) == [answer]
