"""The likelihood rules against hand computations on a tiny random model: causal scores equal
the project's token_nll, PLL equals a loop of masked forward passes, prefix, permutation and
span-corruption scores equal hand-built single passes; padding and batch-mates change nothing."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data.vocab import toy_vocab
from downstream import likelihood
from models.config import ModelConfig
from models.transformer import ModelInputs, Transformer
from objectives import base, clm, span_corruption

VOCAB = toy_vocab(48)
REQUESTS = [([9, 12, 15, 20], [30, 31]), ([8], [40, 9, 11]), ([], [13]),
            ([10, 11, 12, 13, 14, 15, 16, 17], [18, 19, 20, 21])]


def _config(**overrides) -> ModelConfig:
  values = dict(vocab_size=48, num_layers=2, embed_dim=32, num_heads=2, mlp_dim=64, max_len=64,
                init_std=0.5, scan_layers=False)
  values.update(overrides)
  return ModelConfig(**values)


def _init(config: ModelConfig, **extra):
  tokens = jnp.ones((1, 8), jnp.int32)
  inputs = ModelInputs(tokens=tokens, positions=jnp.arange(8)[None], segment_ids=tokens,
                       attn_order=jnp.zeros_like(tokens), **extra)
  return jax.jit(lambda key: nn.unbox(Transformer(config).init(key, inputs))['params'])(
      jax.random.key(1))


def _log_softmax(logits) -> np.ndarray:
  logits = np.asarray(logits, np.float64)
  top = logits.max(-1, keepdims=True)
  return logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))


def _scorer(objective: str, config: ModelConfig, params, seq_len: int = 32, **kwargs):
  return likelihood.Scorer(params=params, model_config=config, vocab=VOCAB, objective=objective,
                           seq_len=seq_len, **kwargs)


HAND_WIDTH = 24  # hand passes are padded to one width, so each kind compiles once


def _apply(config, params, ids, **fields):
  """One forward pass over `ids` alone (padding after it is never attended)."""
  n = len(ids)
  pad = lambda values: jnp.asarray([list(values) + [0] * (HAND_WIDTH - n)], jnp.int32)
  fields = {name: pad(value[0]) if name == 'attn_order' else value
            for name, value in fields.items()}
  inputs = ModelInputs(tokens=pad(ids), positions=pad(range(n)), segment_ids=pad([1] * n),
                       **fields)
  return _jitted_apply(config, params, inputs)


@functools.lru_cache(maxsize=None)
def _forward(config: ModelConfig):
  return jax.jit(lambda params, inputs: Transformer(config).apply({'params': params}, inputs))


def _jitted_apply(config, params, inputs):
  return _forward(config)(params, inputs)


def test_objective_rules_and_refusals():
  assert likelihood.objective_rule('clm') == ('clm', 'exact')
  assert likelihood.objective_rule({'mlm': 1.0, 'nsp': 1.0}) == ('mlm', 'pseudo')
  assert likelihood.objective_rule('deshuffle') == ('deshuffle', 'exact')
  with pytest.raises(ValueError, match='no single token-level objective'):
    likelihood.objective_rule({'clm': 1.0, 'mlm': 1.0})
  with pytest.raises(ValueError, match='holds no generator'):
    _scorer('electra', _config(), None)


@pytest.mark.slow
def test_causal_scores_equal_the_objectives_token_nll():
  """Summed log p(continuation | [bos] context) equals -sum of clm's token_nll (the fused
  ModelInputs.labels path training uses) and a float64 log-softmax of the full logits; batch
  size and batch-mates of other lengths change nothing."""
  config = _config()
  params = _init(config)
  scorer = _scorer('clm', config, params)
  batched = scorer.score(REQUESTS, batch_size=3)
  objective = clm.CausalLM(loss_chunk=4)
  for (context, continuation), result in zip(REQUESTS, batched):
    ids = [VOCAB.bos_id, *context, *continuation]
    pad = lambda values: jnp.asarray([list(values) + [0] * (HAND_WIDTH - len(ids))])
    batch = {'tokens': pad(ids), 'positions': pad(range(len(ids))),
             'segment_ids': pad([1] * len(ids))}
    inputs, _ = objective.prepare(None, batch, base.base_inputs(batch))
    nll = np.asarray(_jitted_apply(config, params, inputs).token_nll[0])
    scored = range(len(ids) - len(continuation) - 1, len(ids) - 1)
    assert result.tokens == len(continuation)
    np.testing.assert_allclose(result.logprob, -sum(nll[i] for i in scored), rtol=1e-5, atol=1e-5)
    log_probs = _log_softmax(_apply(config, params, ids, causal=True).logits[0])
    np.testing.assert_allclose(result.logprob, sum(log_probs[i, ids[i + 1]] for i in scored),
                               rtol=1e-5, atol=1e-5)
    assert result.greedy == all(log_probs[i].argmax() == ids[i + 1] for i in scored)
    alone = scorer.score([(context, continuation)], batch_size=1)[0]
    np.testing.assert_allclose(alone.logprob, result.logprob, rtol=1e-5, atol=1e-5)


def test_greedy_continuation_is_flagged():
  """The argmax continuation, built token by token, is greedy; another one is not."""
  config = _config()
  params = _init(config)
  scorer = _scorer('clm', config, params)
  ids = [VOCAB.bos_id, 9, 12]
  for _ in range(3):
    ids.append(int(np.argmax(_apply(config, params, ids, causal=True).logits[0, len(ids) - 1])))
  greedy, other = scorer.score([([9, 12], ids[3:]), ([9, 12], ids[3:5] + [(ids[5] + 1) % 48])])
  assert greedy.greedy and not other.greedy


@pytest.mark.slow
def test_prefix_rule_uses_the_context_as_a_bidirectional_prefix():
  config = _config()
  params = _init(config)
  results = _scorer('prefix_lm', config, params).score(REQUESTS, batch_size=2)
  for (context, continuation), result in zip(REQUESTS, results):
    ids = [VOCAB.bos_id, *context, *continuation]
    prefix = 1 + len(context)
    order = [0] * prefix + list(range(1, len(continuation) + 1))
    log_probs = _log_softmax(_apply(config, params, ids, attn_order=jnp.asarray([order])).logits[0])
    expected = sum(log_probs[i - 1, ids[i]] for i in range(prefix, len(ids)))
    np.testing.assert_allclose(result.logprob, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('sentence_pairs', [False, True])
@pytest.mark.slow
def test_pseudo_log_likelihood_equals_a_loop_of_masked_passes(sentence_pairs):
  """PLL: each continuation token masked in turn in [start, context, continuation, end],
  one unpadded forward pass each, summed; [cls] .. [sep] for sentence-pair runs."""
  config = _config(norm='post', lm_transform=True, num_token_types=2)
  params = _init(config)
  results = _scorer('mlm', config, params, sentence_pairs=sentence_pairs).score(REQUESTS,
                                                                                batch_size=4)
  start, end = ((VOCAB.cls_id, VOCAB.sep_id) if sentence_pairs else (VOCAB.bos_id, VOCAB.eos_id))
  for (context, continuation), result in zip(REQUESTS, results):
    ids = [start, *context, *continuation, end]
    total, greedy = 0.0, True
    for t in range(len(continuation)):
      at = 1 + len(context) + t
      masked = list(ids)
      masked[at] = VOCAB.mask_id
      logits = _apply(config, params, masked).logits[0, at]
      total += _log_softmax(logits)[ids[at]]
      greedy &= int(np.argmax(logits)) == ids[at]
    assert result.tokens == len(continuation) and result.greedy == greedy
    np.testing.assert_allclose(result.logprob, total, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_permutation_rule_predicts_left_to_right_through_the_query_stream():
  """Token t of the continuation: one pass over [bos, context, continuation[:t], unk] with the
  context at rank 0, the rest at ranks 1..t+1, logits from the last query stream: neither the
  token itself (replaced by unk here) nor later ones matter."""
  config = _config(two_stream=True)
  params = _init(config, query_index=jnp.zeros((1, 2), jnp.int32))
  scorer = _scorer('plm', config, params)
  results = scorer.score(REQUESTS, batch_size=3)
  for (context, continuation), result in zip(REQUESTS, results):
    total = 0.0
    for t in range(len(continuation)):
      # The scored token itself is replaced: its query stream must not see it.
      ids = [VOCAB.bos_id, *context, *continuation[:t], VOCAB.unk_id]
      order = [0] * (1 + len(context)) + list(range(1, t + 2))
      logits = _apply(config, params, ids, attn_order=jnp.asarray([order]),
                      query_index=jnp.asarray([[len(ids) - 1]])).logits[0, 0]
      total += _log_softmax(logits)[continuation[t]]
    np.testing.assert_allclose(result.logprob, total, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_span_rule_scores_the_continuation_as_the_sentinel_span():
  """input [bos, context, s0, EOS], target [s0, continuation, EOS] as one decoder-only
  sequence (bidirectional input, causal target), as the objective lays out a window whose
  last tokens are one noise span; only the continuation's tokens are scored."""
  config = _config(vocab_size=52)
  params = _init(config)
  sentinel = VOCAB.size
  row, noise = jnp.asarray([2, 7, 8, 9, 0]), jnp.asarray([False, False, False, True, False])
  inputs, input_len, _, _ = span_corruption.corrupt(row, noise, 4, sentinel, 0, VOCAB.eos_id)
  assert inputs[:int(input_len)].tolist() == [2, 7, 8, sentinel, VOCAB.eos_id]
  scorer = _scorer('span_corruption', config, params)
  assert scorer.input_eos
  results = scorer.score(REQUESTS, batch_size=2)
  for (context, continuation), result in zip(REQUESTS, results):
    prefix = [VOCAB.bos_id, *context, sentinel, VOCAB.eos_id]
    target = [sentinel, *continuation, VOCAB.eos_id]
    ids = prefix + target
    order = [0] * len(prefix) + list(range(1, len(target) + 1))
    log_probs = _log_softmax(_apply(config, params, ids, attn_order=jnp.asarray([order])).logits[0])
    first = len(prefix) + 1
    expected = sum(log_probs[i - 1, ids[i]] for i in range(first, first + len(continuation)))
    np.testing.assert_allclose(result.logprob, expected, rtol=1e-5, atol=1e-5)


def test_long_contexts_lose_tokens_from_the_left_and_long_continuations_are_refused():
  config = _config()
  params = _init(config)
  scorer = _scorer('clm', config, params, seq_len=8)
  cut = scorer.score([(list(range(10, 30)), [31, 32])])[0]
  kept = scorer.score([([25, 26, 27, 28, 29], [31, 32])])[0]
  np.testing.assert_allclose(cut.logprob, kept.logprob, rtol=1e-6)
  with pytest.raises(ValueError, match='does not fit in the run'):
    scorer.score([([1], list(range(10, 20)))])


def test_electra_pseudo_log_likelihood_comes_from_its_generator():
  """ELECTRA: each continuation token masked in turn, its log-probability from the generator
  reading the discriminator's input embedding, as the objective runs it in training."""
  from objectives import electra  # pylint: disable=import-outside-toplevel

  config = _config(num_layers=1)
  params = _init(config)
  objective = electra.make({'generator_fraction': 0.5}, vocab=VOCAB, seq_len=32)
  generator = nn.unbox(objective.init_params(jax.random.key(2), config)['generator'])
  generator_config = electra.generator_config(config, 0.5)
  scorer = _scorer('electra', config, params, generator=(generator, generator_config))
  results = scorer.score(REQUESTS[:2], batch_size=4)

  @jax.jit
  def hand(inputs, index):
    embedded = Transformer(config).apply({'params': params}, inputs, embeddings_only=True).hidden
    return electra.Generator(generator_config, config.embed_dim).apply(
        {'params': generator}, params['token_embed']['embedding'], embedded, inputs, index,
        train=False)

  for (context, continuation), result in zip(REQUESTS[:2], results):
    ids = [VOCAB.bos_id, *context, *continuation, VOCAB.eos_id]
    total = 0.0
    for t in range(len(continuation)):
      at = 1 + len(context) + t
      masked = ids[:at] + [VOCAB.mask_id] + ids[at + 1:] + [0] * (HAND_WIDTH - len(ids))
      tokens = jnp.asarray([masked])
      inputs = ModelInputs(tokens=tokens, positions=jnp.arange(HAND_WIDTH)[None],
                           segment_ids=(jnp.arange(HAND_WIDTH) < len(ids))[None].astype(jnp.int32))
      total += _log_softmax(hand(inputs, jnp.asarray([[at]]))[0, 0])[ids[at]]
    np.testing.assert_allclose(result.logprob, total, rtol=1e-5, atol=1e-5)
