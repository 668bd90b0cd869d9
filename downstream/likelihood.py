"""log p(continuation | context) for any pretraining run, by the rule its objective allows.

One scorer for every checkpoint: zero-shot ranking (downstream/zero_shot.py), prompting
(downstream/prompting.py) and the lm-evaluation-harness adapter all call `Scorer.score`.
A request is (context ids, continuation ids) in the run's own tokenizer; the scorer adds the
document start the run trained with ([bos], or [cls] for sentence-pair runs) and returns the
summed log-probability of the continuation and whether each of its tokens is the model's
argmax. The rule follows the objective:

  exact              causal LM, deshuffling: left to right, causal attention, through the
                     model's own `token_nll` (ModelInputs.labels), as training scores tokens.
  prefix             prefix LM: [bos] + context is the bidirectional prefix (the objective's
                     `prefix_order`), the continuation is generated causally after it.
  pseudo             MLM (+NSP/SOP), ELECTRA's generator: pseudo-log-likelihood (Salazar et al.,
                     2020): each continuation token masked in turn, everything else visible,
                     one forward pass per token (batched); the sum of the masked tokens'
                     log-probabilities. Not a normalised distribution over continuations.
  plm_natural_order  permutation LM in the left-to-right factorisation order: context first
                     (rank 0), continuation tokens ranked 1..T; token t's query stream sees the
                     context and continuation tokens before it, its position but not itself.
  span_sentinel      span corruption: the continuation is the one noise span at the end of
                     the text. The input and target are the objective's own `corrupt` of
                     [bos] + context + continuation with that span as noise (input: context,
                     the first sentinel and EOS as T5's inputs end; target: sentinel,
                     continuation, EOS), laid out by `prefix_lm.join`; only the continuation's
                     tokens are scored.

Rows are padded to a few length buckets (powers of two) and a fixed batch size, so each rule
compiles once per bucket. A context too long for the run's sequence length loses tokens
from the left.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from models.config import ModelConfig
from models.transformer import ModelInputs, Transformer
from objectives import prefix_lm, span_corruption

RULES = ('exact', 'prefix', 'pseudo', 'plm_natural_order', 'span_sentinel')
OBJECTIVE_RULES = {'clm': 'exact', 'deshuffle': 'exact', 'prefix_lm': 'prefix', 'mlm': 'pseudo',
                   'electra': 'pseudo', 'plm': 'plm_natural_order',
                   'span_corruption': 'span_sentinel'}
SENTENCE_LEVEL = ('nsp', 'sop')  # no token probabilities of their own
MIN_BUCKET = 16
LABEL_CHUNK = 256  # positions per chunk of the fused logits + cross-entropy (exact rules)


@dataclasses.dataclass(frozen=True)
class Scored:
  """One request's result: summed log-probability of the continuation's tokens, whether every
  one of them is the argmax (the continuation is greedy), and how many tokens were scored."""

  logprob: float
  greedy: bool
  tokens: int


def objective_rule(objective: str | Mapping[str, float]) -> tuple[str, str]:
  """(token objective name, rule) of a run's config.objective (a name or name -> weight)."""
  names = [objective] if isinstance(objective, str) else list(objective)
  token_names = [name for name in names if name not in SENTENCE_LEVEL]
  unknown = [name for name in token_names if name not in OBJECTIVE_RULES]
  if unknown or len(token_names) != 1:
    raise ValueError(f'config.objective={objective!r} has no single token-level objective with a '
                     f'likelihood rule (known: {sorted(OBJECTIVE_RULES)}): score a run of one of '
                     'them.')
  return token_names[0], OBJECTIVE_RULES[token_names[0]]


def bucket(length: int, limit: int) -> int:
  """The padded width for `length` tokens: the next power of two >= MIN_BUCKET, at most `limit`."""
  width = MIN_BUCKET
  while width < length:
    width *= 2
  return min(width, limit)


@dataclasses.dataclass
class Scorer:
  """Scores requests against one checkpoint; see the module docstring for the rules."""

  params: Any
  model_config: ModelConfig
  vocab: Any  # data.vocab.Vocab of the run's tokenizer
  objective: str  # the token-level objective's name
  seq_len: int  # the run's sequence length: the longest row scored
  sentence_pairs: bool = False  # bidirectional runs on [cls] A [sep] B [sep] examples
  generator: tuple[Any, ModelConfig] | None = None  # ELECTRA: (params, config) of its generator

  def __post_init__(self):
    self.rule = OBJECTIVE_RULES[self.objective]
    if self.objective == 'electra' and self.generator is None:
      raise ValueError('This ELECTRA checkpoint holds no generator, and its discriminator gives '
                       'no token probabilities: score a run whose checkpoint saves the generator.')
    if self.rule == 'pseudo' and self.vocab.mask_id < 0:
      raise ValueError('Pseudo-log-likelihood needs a [MASK] piece: the run\'s tokenizer has none.')
    # Span corruption's input ends with EOS where the objective's does (T5's format).
    self.input_eos = self.rule == 'span_sentinel' and span_input_ends_with_eos()
    self._compiled: dict[tuple[int, ...], Callable[..., Any]] = {}

  @property
  def start_id(self) -> int:
    return self.vocab.cls_id if self.sentence_pairs else self.vocab.bos_id

  @property
  def end_id(self) -> int:
    return self.vocab.sep_id if self.sentence_pairs else self.vocab.eos_id

  def overhead(self) -> int:
    """Tokens a row adds to context + continuation (start, end, sentinels, EOS)."""
    return {'exact': 1, 'prefix': 1, 'plm_natural_order': 1, 'pseudo': 2,
            'span_sentinel': 4 + int(self.input_eos)}[self.rule]

  def fit(self, context: Sequence[int], continuation: Sequence[int]) -> list[int]:
    """The context's ids kept (from the right) so the row fits in `seq_len`."""
    room = self.seq_len - self.overhead() - len(continuation)
    if not continuation:
      raise ValueError('A request with an empty continuation has nothing to score.')
    if room < 0:
      raise ValueError(f'A {len(continuation)}-token continuation does not fit in the run\'s '
                       f'seq_len={self.seq_len} ({self.rule} rule): shorten it.')
    return list(context)[max(0, len(context) - room):] if room else []

  # -------------------------------------------------------------------------------- scoring

  def score(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]],
            batch_size: int = 32) -> list[Scored]:
    """Every request's Scored, in order; rows are grouped by padded width and batched."""
    rows: list[tuple[int, dict[str, Any]]] = []
    for index, (context, continuation) in enumerate(requests):
      continuation = [int(t) for t in continuation]
      context = self.fit([int(t) for t in context], continuation)
      for row in self._rows(context, continuation):
        rows.append((index, row))
    totals = np.zeros(len(requests), np.float64)
    greedy = np.ones(len(requests), bool)
    counts = np.zeros(len(requests), np.int64)
    groups: dict[tuple[int, ...], list[tuple[int, dict[str, Any]]]] = {}
    for index, row in rows:
      groups.setdefault(row['shape'], []).append((index, row))
    for shape, members in sorted(groups.items()):
      fn = self._function(shape)
      for begin in range(0, len(members), batch_size):
        chunk = members[begin:begin + batch_size]
        batch = {name: np.stack([row[name] for _, row in chunk]
                                + [chunk[-1][1][name]] * (batch_size - len(chunk)))
                 for name in chunk[0][1] if name != 'shape'}
        logprob, correct, count = jax.device_get(fn(self.params, batch))
        for slot, (index, _) in enumerate(chunk):
          totals[index] += float(logprob[slot])
          greedy[index] &= bool(correct[slot])
          counts[index] += int(count[slot])
    return [Scored(float(t), bool(g), int(c)) for t, g, c in zip(totals, greedy, counts)]

  def _rows(self, context: list[int], continuation: list[int]) -> list[dict[str, Any]]:
    """The host arrays of one request: one row, or one per continuation token (pseudo)."""
    ids = [self.start_id, *context, *continuation]
    start, count = 1 + len(context), len(continuation)
    if self.rule == 'pseudo':
      ids.append(self.end_id)
      width = bucket(len(ids), self.seq_len)
      tokens = _padded(ids, width, self.vocab.pad_id)
      return [dict(shape=(width,), tokens=tokens, length=np.int32(len(ids)),
                   masked=np.int32(start + t)) for t in range(count)]
    needed = len(ids) + (self.overhead() - 1)
    width = bucket(needed, self.seq_len)
    row = dict(tokens=_padded(ids, width, self.vocab.pad_id), length=np.int32(len(ids)),
               start=np.int32(start), shape=(width,))
    if self.rule == 'plm_natural_order':
      slots = bucket(count, self.seq_len)
      row['shape'] = (width, slots)
    return [row]

  def _function(self, shape: tuple[int, ...]) -> Callable[..., Any]:
    if shape not in self._compiled:
      build = {'exact': self._labels_fn, 'prefix': self._labels_fn, 'span_sentinel': self._span_fn,
               'pseudo': self._pseudo_fn, 'plm_natural_order': self._plm_fn}[self.rule]
      self._compiled[shape] = jax.jit(build(*shape))
    return self._compiled[shape]

  # ------------------------------------------------------------------------- the rules (jit)

  def _scores_from_labels(self, params, inputs: ModelInputs, weights):
    """label_scores of each position's next token."""
    labels = jnp.pad(inputs.tokens[:, 1:], ((0, 0), (0, 1)))
    return label_scores(self.model_config, params, inputs.replace(predict_index=None), labels,
                        weights)

  def _labels_fn(self, width: int):
    """exact (causal) and prefix rules: one row [start, context, continuation]."""
    prefix = self.rule == 'prefix'

    def fn(params, batch):
      index = jnp.arange(width)[None, :]
      length, start = batch['length'][:, None], batch['start'][:, None]
      segment_ids = (index < length).astype(jnp.int32)
      inputs = ModelInputs(tokens=batch['tokens'], positions=jnp.where(segment_ids > 0, index, 0),
                           segment_ids=segment_ids, causal=not prefix)
      if prefix:
        order, _ = prefix_lm.prefix_order(segment_ids, jnp.broadcast_to(start, segment_ids.shape))
        inputs = inputs.replace(attn_order=order)
      # Position i predicts token i + 1: the continuation's tokens start..length-1.
      weights = (index >= start - 1) & (index < length - 1)
      return self._scores_from_labels(params, inputs, weights)

    return fn

  def _span_fn(self, width: int):
    """span_sentinel: the objective's corrupt() with the continuation as the one noise span."""
    vocab = self.vocab

    def fn(params, batch):
      index = jnp.arange(width)
      start, length = batch['start'][:, None], batch['length'][:, None]
      noise = (index[None, :] >= start) & (index[None, :] < length)
      corrupt = lambda row, mask, n: span_corruption.corrupt(
          row, mask, n, vocab.size, vocab.pad_id, vocab.eos_id)
      prefix, prefix_len, target, target_len = jax.vmap(corrupt)(batch['tokens'], noise,
                                                                 batch['length'])
      joined, _ = prefix_lm.join(prefix, prefix_len, target, target_len, length=width,
                                 pad_id=vocab.pad_id, num_predict=1)
      # target = [sentinel, continuation, EOS] at p_len..: the sentinel's position predicts
      # the first continuation token; the last continuation token predicts EOS (not scored).
      count = (batch['length'] - batch['start'])[:, None]
      at = index[None, :] - prefix_len[:, None]
      weights = (at >= 0) & (at < count)
      return self._scores_from_labels(params, joined, weights)

    return fn

  def _plm_fn(self, width: int, slots: int):
    """plm_natural_order: ranks 0 for the context, 1..T for the continuation; query stream."""
    model = Transformer(self.model_config)

    def fn(params, batch):
      index = jnp.arange(width)[None, :]
      length, start = batch['length'][:, None], batch['start'][:, None]
      segment_ids = (index < length).astype(jnp.int32)
      order = jnp.where((index >= start) & (segment_ids > 0), index - start + 1, 0)
      slot = jnp.arange(slots)[None, :]
      query_index = jnp.clip(start + slot, 0, width - 1)
      weights = (start + slot < length).astype(jnp.float32)
      inputs = ModelInputs(tokens=batch['tokens'], positions=jnp.where(segment_ids > 0, index, 0),
                           segment_ids=segment_ids, attn_order=order.astype(jnp.int32),
                           query_index=query_index)
      logits = model.apply({'params': params}, inputs).logits
      targets = jnp.take_along_axis(batch['tokens'], query_index, axis=1)
      return _picked(logits, targets, weights)

    return fn

  def _pseudo_fn(self, width: int):
    """pseudo: the row with one token masked, its log-probability from the MLM head (or
    ELECTRA's generator)."""
    model = Transformer(self.model_config)
    mask_id = self.vocab.mask_id

    def fn(params, batch):
      index = jnp.arange(width)[None, :]
      segment_ids = (index < batch['length'][:, None]).astype(jnp.int32)
      masked = batch['masked'][:, None]
      tokens = jnp.where(index == masked, mask_id, batch['tokens'])
      inputs = ModelInputs(tokens=tokens, positions=jnp.where(segment_ids > 0, index, 0),
                           segment_ids=segment_ids, predict_index=masked)
      if self.generator is None:
        logits = model.apply({'params': params}, inputs).logits
      else:
        logits = self._generator_logits(params, inputs, masked)
      targets = jnp.take_along_axis(batch['tokens'], masked, axis=1)
      return _picked(logits, targets, jnp.ones(targets.shape, jnp.float32))

    return fn

  def _generator_logits(self, params, inputs: ModelInputs, index):
    """ELECTRA's generator MLM logits at `index`, from the discriminator's input embedding,
    as the objective runs it in training (objectives/electra.py)."""
    from objectives import electra  # pylint: disable=import-outside-toplevel

    generator_params, generator_config = self.generator
    inputs = inputs.replace(predict_index=None, compute_logits=False)
    embedded = Transformer(self.model_config).apply({'params': params}, inputs,
                                                    embeddings_only=True).hidden
    table = params['token_embed']['embedding']
    return electra.Generator(generator_config, self.model_config.embed_dim).apply(
        {'params': generator_params}, table, embedded, inputs, index, train=False)


def label_scores(model_config: ModelConfig, params: Any, inputs: ModelInputs, labels,
                 weights) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(sum of log p(labels) over the weighted positions, whether every weighted label is the
  argmax, their count) per row, from the model's own fused scores (ModelInputs.labels:
  training's token_nll), never materialising the [batch, length, vocab] logits at once."""
  width = inputs.tokens.shape[1]
  inputs = inputs.replace(labels=labels, label_chunk=min(width, LABEL_CHUNK))
  outputs = Transformer(model_config).apply({'params': params}, inputs)
  weights = weights.astype(jnp.float32)
  logprob = -(jnp.where(weights > 0, outputs.token_nll, 0.0) * weights).sum(axis=1)
  correct = (outputs.token_correct | (weights == 0)).all(axis=1)
  return logprob, correct, weights.sum(axis=1)


def _padded(ids: Sequence[int], width: int, pad_id: int) -> np.ndarray:
  row = np.full(width, pad_id, np.int32)
  row[:len(ids)] = ids
  return row


def _picked(logits, targets, weights):
  """(sum of the weighted targets' log-probabilities, all argmax, count) per row."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  correct = (jnp.argmax(logits, axis=-1) == targets) | (weights == 0)
  return ((picked * weights).sum(axis=1), correct.all(axis=1),
          weights.sum(axis=1).astype(jnp.int32))


# ------------------------------------------------------------------------------- from a run

def from_pretrained(pretrained: Any) -> Scorer:
  """The Scorer of a loaded checkpoint (downstream/pretrained.py's `Pretrained`)."""
  name, _ = objective_rule(pretrained.objective)
  generator = None
  if name == 'electra':
    generator = electra_generator(pretrained.workdir, pretrained.step, pretrained.model_config)
  seq_len = int(np.shape(pretrained.example_batch['tokens'])[1])
  return Scorer(params=pretrained.params, model_config=pretrained.model_config,
                vocab=pretrained.tokenizer.vocab, objective=name, seq_len=seq_len,
                sentence_pairs=pretrained.data_format != 'packed', generator=generator)


def load(workdir: str, step: int | None = None) -> tuple[Scorer, Any]:
  """(Scorer, Pretrained) of `workdir` at `step` (None: the latest checkpoint)."""
  from downstream import pretrained as pretrained_lib  # pylint: disable=import-outside-toplevel

  pretrained = pretrained_lib.load(workdir, step)
  return from_pretrained(pretrained), pretrained


def span_input_ends_with_eos() -> bool:
  """Whether span corruption's corrupted input ends with EOS, read off the objective's own
  `corrupt` on a three-token row whose last token is the noise."""
  tokens = jnp.asarray([7, 8, 9], jnp.int32)
  noise = jnp.asarray([False, False, True])
  inputs, input_len, _, _ = span_corruption.corrupt(tokens, noise, jnp.int32(3), 100, 0, 3)
  return int(input_len) > 3 or int(inputs[int(input_len) - 1]) == 3


def electra_generator(workdir: str, step: int,
                      model_config: ModelConfig) -> tuple[Any, ModelConfig] | None:
  """(generator params, generator config) saved with an ELECTRA run's checkpoint at `step`,
  read through the run's own restore path (training/workdir.py), or None when it has none."""
  # pylint: disable=import-outside-toplevel
  from data import pipeline
  from objectives import electra
  from training import mesh as mesh_lib, state as state_lib, workdir as workdir_lib

  config, _, objective, _, data_format = workdir_lib.describe(workdir)
  parts = getattr(objective, 'parts', None) or (('electra', 1.0, objective),)
  names = [name for name, _, part in parts if isinstance(part, electra.Electra)]
  if not names:
    return None
  mesh = mesh_lib.make_mesh(config.mesh, jax.local_devices())
  rules = mesh_lib.logical_rules(config.mesh)
  example = pipeline.example_batch(data_format, 2, config.seq_len, config.data)
  target, _ = workdir_lib.abstract_params(objective, model_config, example, mesh, rules)
  params, _ = workdir_lib.restore(workdir, step, target)
  _, owned = state_lib.split_params(params)
  if owned is not None and getattr(objective, 'parts', None):
    owned = owned.get(names[0])
  if not owned or 'generator' not in owned:
    return None
  part = dict((name, part) for name, _, part in parts)[names[0]]
  generator = jax.device_put(owned['generator'], jax.local_devices()[0])
  return generator, electra.generator_config(model_config, part.generator_fraction)
