"""Zero- and few-shot classification without training, for causal checkpoints (GPT-3's way):
each label word is scored by its log-likelihood after the prompt, and the most likely wins.
The scores come from the likelihood layer's exact rule (downstream/likelihood.py); the
zero-shot yardstick for every objective is downstream/zero_shot.py.

The prompt is `k` demonstrations drawn from the train split, each the task's template filled
with an example and followed by its label word, then the template filled with the example to
classify, joined by blank lines. When it is too long for `seq_len`, it loses tokens from the
left (the oldest demonstrations first), the same tokens for every label word.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

import jax
import numpy as np

from downstream import likelihood
from downstream import metrics as metrics_lib
from downstream.tasks.base import Task
from models.config import ModelConfig
from models.transformer import ModelInputs


def fill(template: str, example: dict[str, Any]) -> str:
  """The template with {text} and {text_pair} filled in."""
  try:
    return template.format(text=example.get('text', ''), text_pair=example.get('text_pair', ''))
  except (KeyError, IndexError) as error:
    raise ValueError(f'config.task.template={template!r} names an unknown field {error}: use '
                     '{text} and {text_pair}.') from error


def prompts(task: Task, examples: Sequence[dict[str, Any]], k: int, seed: int) -> list[str]:
  """Each example's prompt with `k` demonstrations drawn (per example) from the train split."""
  rng = random.Random(seed)
  train = task.splits['train']
  texts = []
  for example in examples:
    shots = rng.sample(train, min(k, len(train))) if k else []
    parts = [fill(task.template, shot) + task.label_words[shot['label']] for shot in shots]
    texts.append('\n\n'.join(parts + [fill(task.template, example)]))
  return texts


def word_ids(tokenizer, word: str) -> list[int]:
  """A label word's pieces on their own: a leading space becomes SentencePiece's word-start
  marker (its dummy prefix)."""
  ids = tokenizer.encode(word[1:] if word.startswith(' ') else word)
  if not ids:
    raise ValueError(f'Label word {word!r} encodes to no tokens: fix config.task.label_words.')
  return ids


def continuation_ids(context: list[int], joint: list[int], alone: list[int]) -> list[int]:
  """The word's pieces as they follow the context: the tail of the encoding of context + word
  (so ' yes' is '▁yes' and 'yes' after 'Answer:' carries no word-start marker, as in the
  demonstrations); the word on its own where a piece spans the boundary."""
  if len(joint) > len(context) and joint[:len(context)] == context:
    return joint[len(context):]
  return alone


def encode_choices(tokenizer, contexts: Sequence[str], words: Sequence[str], seq_len: int
                   ) -> dict[str, np.ndarray]:
  """One row per (context, word): `[bos] context word`, targets the next tokens, weight 1 on
  the word's tokens; rows are ordered context-major. A context too long for `seq_len` loses
  tokens from the left, the same ones for every word (room is left for the longest), so the
  words of one context are scored after the very same tokens."""
  vocab = tokenizer.vocab
  context_ids = tokenizer.encode_batch(list(contexts))
  joint_ids = tokenizer.encode_batch([c + w for c in contexts for w in words])
  alone = [word_ids(tokenizer, w) for w in words]
  rows = len(contexts) * len(words)
  arrays = {name: np.zeros((rows, seq_len), np.int32)
            for name in ('tokens', 'positions', 'segment_ids', 'targets')}
  arrays['weights'] = np.zeros((rows, seq_len), np.float32)
  row = 0
  for c, context in enumerate(context_ids):
    pieces = [continuation_ids(context, joint_ids[c * len(words) + j], alone[j])
              for j in range(len(words))]
    longest = max(len(word) for word in pieces)
    if longest + 2 > seq_len:
      raise ValueError(f'config.seq_len={seq_len} is too short for a {longest}-token label word.')
    kept = context[max(0, len(context) - (seq_len - 1 - longest)):]
    for word in pieces:
      ids = [vocab.bos_id, *kept, *word]
      n = len(ids)
      arrays['tokens'][row, :n] = ids
      arrays['positions'][row, :n] = np.arange(n)
      arrays['segment_ids'][row, :n] = 1
      arrays['targets'][row, :n - 1] = ids[1:]
      arrays['weights'][row, n - 1 - len(word):n - 1] = 1.0
      row += 1
  return arrays


def make_scorer(model_config: ModelConfig):
  """(params, batch) -> (sum of the weighted targets' log-probabilities, their count) per row,
  by the likelihood layer's scores of ModelInputs.labels (training's token_nll)."""

  @jax.jit
  def scorer(params, batch):
    inputs = ModelInputs(tokens=batch['tokens'], positions=batch['positions'],
                         segment_ids=batch['segment_ids'], causal=True)
    total, _, count = likelihood.label_scores(model_config, params, inputs, batch['targets'],
                                              batch['weights'])
    return total, count

  return scorer


def classify(params: Any, model_config: ModelConfig, tokenizer, task: Task,
             examples: Sequence[dict[str, Any]], *, k: int, seed: int, seq_len: int,
             batch_size: int = 32, normalize: bool = False) -> np.ndarray:
  """The predicted label of each example: the label word of highest (mean-per-token if
  `normalize`) log-likelihood after its prompt."""
  if not task.label_words:
    raise ValueError(f'Task {task.name} has no label words: set config.task.label_words.')
  arrays = encode_choices(tokenizer, prompts(task, examples, k, seed), task.label_words, seq_len)
  scorer = make_scorer(model_config)
  totals, counts = [], []
  size = len(arrays['tokens'])
  for begin in range(0, size, batch_size):
    rows = np.arange(begin, begin + batch_size)
    rows = np.where(rows < size, rows, 0)
    total, count = scorer(params, {name: value[rows] for name, value in arrays.items()})
    keep = min(batch_size, size - begin)
    totals.append(np.asarray(total)[:keep])
    counts.append(np.asarray(count)[:keep])
  scores = np.concatenate(totals)
  if normalize:
    scores = scores / np.maximum(np.concatenate(counts), 1.0)
  return scores.reshape(len(examples), len(task.label_words)).argmax(axis=1)


def evaluate(params: Any, model_config: ModelConfig, tokenizer, task: Task, split: str, *,
             k: int, seed: int, seq_len: int, batch_size: int = 32, normalize: bool = False
             ) -> dict[str, float]:
  """The task's metrics of k-shot prompting on one split."""
  if task.kind != 'classification':
    raise ValueError(f'Prompting classifies by label words; task {task.name} is {task.kind}.')
  examples = task.splits[split]
  predicted = classify(params, model_config, tokenizer, task, examples, k=k, seed=seed,
                       seq_len=seq_len, batch_size=batch_size, normalize=normalize)
  return metrics_lib.compute(task.metrics, predicted,
                             np.asarray([e['label'] for e in examples]))
