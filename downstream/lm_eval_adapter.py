"""An lm-evaluation-harness model (its `LM` interface) over a pretraining workdir and step.

Scores come from the likelihood layer (downstream/likelihood.py), by the rule of the run's
objective: exact log-likelihood for causal runs, prefix, pseudo-log-likelihood, the
permutation LM's natural order or span corruption's sentinel span for the others. Text is
tokenized with the run's own tokenizer: a continuation's pieces are those it has after the
context (the tail of the encoding of context + continuation), and every request starts with
the run's document start ([bos]), which also conditions a continuation with empty context.
`loglikelihood_rolling` scores a text in disjoint windows of the run's sequence length, each
conditioned on the tokens before it that fit (the harness's own window rule).
`generate_until` decodes with the key/value cache (models/decode.py) greedily or with the
request's temperature, top_k and top_p, and refuses runs that were not trained left to right.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import jax
from lm_eval import utils as lm_utils
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from downstream import generation, likelihood, prompting
from models import decode

DEFAULT_MAX_GEN_TOKS = 256  # the harness's default
NO_TOKEN = -1  # get_rolling_token_windows' prefix: dropped, the scorer adds [bos] itself


@register_model('pretraining_objectives')
class PretrainedLM(LM):
  """`--model pretraining_objectives --model_args workdir=runs/clm,step=300` in the harness's
  own command, or built directly by tools/lm_eval.py."""

  def __init__(self, workdir: str, step: int | None = None, batch_size: int = 32, seed: int = 0,
               scorer: likelihood.Scorer | None = None, pretrained: Any = None) -> None:
    super().__init__()
    if scorer is None:
      scorer, pretrained = likelihood.load(workdir, None if step in (None, '') else int(step))
    self.scorer, self.pretrained = scorer, pretrained
    self.tokenizer = pretrained.tokenizer
    self.batch_size = int(batch_size)
    self.seed = int(seed)
    self._generators: dict[tuple[Any, ...], Any] = {}

  # ----------------------------------------------------------------------- log-likelihood

  def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as the harness splits them: trailing spaces of the
    context move to the continuation; the continuation's pieces are those after the context."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
      context, continuation = context[:-spaces], context[-spaces:] + continuation
    context_ids = self.tokenizer.encode(context) if context else []
    joint = self.tokenizer.encode(context + continuation)
    return context_ids, prompting.continuation_ids(
        context_ids, joint, self.tokenizer.encode(continuation))

  def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
    pairs = [self.encode_pair(*request.args) for request in requests]
    scored = self.scorer.score(pairs, batch_size=self.batch_size)
    return [(result.logprob, result.greedy) for result in scored]

  def rolling_windows(self, text: str) -> list[tuple[list[int], list[int]]]:
    """(context ids, scored ids) windows covering every token of `text` exactly once."""
    ids = self.tokenizer.encode(text)
    width = self.scorer.seq_len - self.scorer.overhead() - 1  # + the one context token
    windows = lm_utils.get_rolling_token_windows(token_list=ids, prefix_token=NO_TOKEN,
                                                 max_seq_len=width, context_len=1)
    return [([t for t in context if t != NO_TOKEN], list(scored))
            for context, scored in map(lm_utils.make_disjoint_window, windows)]

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    spans, pairs = [], []
    for request in requests:
      windows = self.rolling_windows(request.args[0])
      spans.append((len(pairs), len(windows)))
      pairs += windows
    scores = [result.logprob for result in self.scorer.score(pairs, batch_size=self.batch_size)]
    return [float(sum(scores[first:first + count])) for first, count in spans]

  # --------------------------------------------------------------------------- generation

  def check_generation(self) -> None:
    """Generation decodes left to right with a key/value cache: causal LM runs only."""
    if self.scorer.objective != 'clm':
      raise ValueError(f'generate_until: {self.pretrained.workdir} was pretrained with '
                       f'config.objective={self.pretrained.objective!r}, not a causal LM; '
                       'generation tasks need a clm run (likelihood tasks work for every run).')

  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    self.check_generation()
    outputs: list[str | None] = [None] * len(requests)
    groups: dict[tuple[Any, ...], list[int]] = {}
    for index, request in enumerate(requests):
      kwargs = dict(request.args[1] or {})
      until = kwargs.get('until') or []
      until = [until] if isinstance(until, str) else list(until)
      sampling = decode.Sampling()
      if kwargs.get('do_sample') or float(kwargs.get('temperature', 0.0) or 0.0) > 0:
        sampling = decode.Sampling(temperature=float(kwargs.get('temperature', 1.0) or 1.0),
                                   top_k=int(kwargs.get('top_k', 0) or 0),
                                   top_p=float(kwargs.get('top_p', 1.0) or 1.0))
      max_new = int(kwargs.get('max_gen_toks', DEFAULT_MAX_GEN_TOKS))
      groups.setdefault((tuple(until), sampling, max_new), []).append(index)
    for (until, sampling, max_new), members in groups.items():
      texts = self.generate([requests[i].args[0] for i in members], max_new, sampling)
      for index, text in zip(members, texts):
        outputs[index] = cut_at(text, until)
    return outputs

  def generate(self, contexts: Sequence[str], max_new: int, sampling: decode.Sampling
               ) -> list[str]:
    """Continuations of `contexts` ([bos] + pieces, cut from the left to fit), batched."""
    config, vocab = self.scorer.model_config, self.tokenizer.vocab
    limit = self.scorer.seq_len
    if max_new >= limit:
      logging.warning('max_gen_toks=%d does not fit the run\'s seq_len=%d: generating %d.',
                      max_new, limit, limit // 2)
      max_new = limit // 2
    room = limit - max_new  # prompt + new tokens - 1 <= seq_len, [bos] included
    pieces = self.tokenizer.encode_batch(list(contexts))
    prompts = [[vocab.bos_id] + ids[max(0, len(ids) - (room - 1)):] for ids in pieces]
    key = (max_new, sampling)
    if key not in self._generators:
      self._generators[key] = decode.make_generate_fn(
          config, max_new_tokens=max_new, sampling=sampling, eos_id=vocab.eos_id,
          pad_id=vocab.pad_id, suppress_ids=generation.suppressed_ids(vocab))
    fn = self._generators[key]
    texts = []
    rng = jax.random.key(self.seed)
    for first in range(0, len(prompts), self.batch_size):
      batch = prompts[first:first + self.batch_size]
      rows = len(batch)
      batch = batch + [batch[-1]] * (self.batch_size - rows)
      tokens, lengths = decode.left_pad(batch, vocab.pad_id, multiple=generation.WIDTH_MULTIPLE)
      result = jax.device_get(fn(self.scorer.params, tokens, lengths,
                                 jax.random.fold_in(rng, first)))
      for row in range(rows):
        ids = decode.strip(result.tokens[row], result.lengths[row], vocab.eos_id)
        texts.append(generation.continuation(self.tokenizer, batch[row], ids))
    return texts


def cut_at(text: str, until: Sequence[str]) -> str:
  """`text` up to the first occurrence of any stop string."""
  end = min([text.find(stop) for stop in until if stop and stop in text] or [len(text)])
  return text[:end]


def results_json(results: dict) -> str:
  """The harness's results as its own command writes them (samples are not part of it)."""
  import json  # pylint: disable=import-outside-toplevel

  results = {key: value for key, value in results.items() if key != 'samples'}
  return json.dumps(results, indent=2, default=lm_utils.handle_non_serializable,
                    ensure_ascii=False)
