"""Each task's standard scores, computed on host numpy arrays of predictions and labels.

Accuracy, F1 (binary, or macro over classes), Matthews correlation, Pearson and Spearman
correlation, and SQuAD's exact match and token F1 after SQuAD's answer normalisation
(lower case, no punctuation, no articles a/an/the, single spaces).
"""

from __future__ import annotations

import collections
import re
import string
from typing import Callable, Sequence

import numpy as np


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
  """Fraction of predictions equal to the labels."""
  predictions, labels = np.asarray(predictions), np.asarray(labels)
  return float(np.mean(predictions == labels)) if labels.size else 0.0


def binary_f1(predictions: np.ndarray, labels: np.ndarray, positive: int = 1) -> float:
  """F1 of the positive class: 2 tp / (2 tp + fp + fn); 0 when there is no positive at all."""
  predictions, labels = np.asarray(predictions), np.asarray(labels)
  tp = np.sum((predictions == positive) & (labels == positive))
  fp = np.sum((predictions == positive) & (labels != positive))
  fn = np.sum((predictions != positive) & (labels == positive))
  denominator = 2 * tp + fp + fn
  return float(2 * tp / denominator) if denominator else 0.0


def macro_f1(predictions: np.ndarray, labels: np.ndarray) -> float:
  """Unweighted mean of each class's F1 over the classes present in labels or predictions."""
  classes = np.union1d(np.asarray(labels), np.asarray(predictions))
  return float(np.mean([binary_f1(predictions, labels, c) for c in classes])) if classes.size else 0.0


def matthews(predictions: np.ndarray, labels: np.ndarray) -> float:
  """Matthews correlation (multi-class form of Gorodkin 2004); 0 when undefined, like sklearn."""
  predictions, labels = np.asarray(predictions), np.asarray(labels)
  classes = np.union1d(labels, predictions)
  index = {c: i for i, c in enumerate(classes)}
  confusion = np.zeros((len(classes), len(classes)), np.float64)
  for truth, guess in zip(labels, predictions):
    confusion[index[truth], index[guess]] += 1
  t, p = confusion.sum(axis=1), confusion.sum(axis=0)
  c, s = np.trace(confusion), confusion.sum()
  denominator = np.sqrt((s * s - p @ p) * (s * s - t @ t))
  return float((c * s - t @ p) / denominator) if denominator else 0.0


def pearson(predictions: np.ndarray, labels: np.ndarray) -> float:
  """Pearson correlation; 0 when either side is constant."""
  x, y = np.asarray(predictions, np.float64), np.asarray(labels, np.float64)
  x, y = x - x.mean(), y - y.mean()
  denominator = np.sqrt((x * x).sum() * (y * y).sum())
  return float((x * y).sum() / denominator) if denominator else 0.0


def _ranks(values: np.ndarray) -> np.ndarray:
  """Ranks from 1, ties sharing their average rank."""
  values = np.asarray(values, np.float64)
  order = np.argsort(values, kind='stable')
  ranks = np.empty(len(values), np.float64)
  sorted_values = values[order]
  start = 0
  while start < len(values):
    end = start
    while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
      end += 1
    ranks[order[start:end + 1]] = (start + end) / 2 + 1
    start = end + 1
  return ranks


def spearman(predictions: np.ndarray, labels: np.ndarray) -> float:
  """Spearman rank correlation: Pearson of the (tie-averaged) ranks."""
  return pearson(_ranks(predictions), _ranks(labels))


def normalize_answer(text: str) -> str:
  """SQuAD's normalisation: lower case, drop punctuation and articles, collapse whitespace."""
  text = text.lower()
  text = ''.join(ch for ch in text if ch not in set(string.punctuation))
  text = re.sub(r'\b(a|an|the)\b', ' ', text)
  return ' '.join(text.split())


def answer_f1(prediction: str, truth: str) -> float:
  """Token-overlap F1 of two answers after normalisation (SQuAD v1.1's f1_score)."""
  predicted, true = normalize_answer(prediction).split(), normalize_answer(truth).split()
  if not predicted or not true:  # SQuAD v2's rule: an empty answer matches only an empty one
    return float(predicted == true)
  common = collections.Counter(predicted) & collections.Counter(true)
  same = sum(common.values())
  if same == 0:
    return 0.0
  precision, recall = same / len(predicted), same / len(true)
  return 2 * precision * recall / (precision + recall)


def answer_exact(prediction: str, truth: str) -> float:
  return float(normalize_answer(prediction) == normalize_answer(truth))


def squad_scores(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> dict[str, float]:
  """Exact match and F1 in [0, 1], each the best over an example's gold answers, averaged.
  An example without gold answers (unanswerable, as in SQuAD v2) has the empty answer."""
  if not predictions:
    return {'exact_match': 0.0, 'f1': 0.0}
  answers = [list(gold) or [''] for gold in answers]
  exact = [max(answer_exact(p, a) for a in gold) for p, gold in zip(predictions, answers)]
  f1 = [max(answer_f1(p, a) for a in gold) for p, gold in zip(predictions, answers)]
  return {'exact_match': float(np.mean(exact)), 'f1': float(np.mean(f1))}


# name -> function(predictions, labels) for classification and regression tasks.
LABEL_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    'accuracy': accuracy, 'f1': binary_f1, 'macro_f1': macro_f1, 'matthews': matthews,
    'pearson': pearson, 'spearman': spearman,
}
QA_METRICS = ('exact_match', 'f1')


def compute(names: Sequence[str], predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """The named label metrics of one evaluation."""
  unknown = [name for name in names if name not in LABEL_METRICS]
  if unknown:
    raise ValueError(f'Unknown metric {unknown[0]!r}: choose from {sorted(LABEL_METRICS)}.')
  return {name: LABEL_METRICS[name](predictions, labels) for name in names}
