"""Soft-prompt inputs, key/value-cache decoding and sampling: numbers, not shapes."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import decode
from models.config import ModelConfig
from models.transformer import KVCache, ModelInputs, Transformer
from objectives import nsp  # pylint: disable=unused-import  (attaches the sentence head)


def _tiny(**overrides) -> ModelConfig:
  values = dict(vocab_size=48, num_layers=2, embed_dim=16, num_heads=2, mlp_dim=32, max_len=64)
  values.update(overrides)
  return ModelConfig(**values)


def _init(config: ModelConfig, inputs: ModelInputs, seed: int = 0):
  """Unboxed parameters, initialised under jit (eager Flax is slow on a busy CPU)."""
  init = jax.jit(lambda key: nn.unbox(Transformer(config).init(key, inputs)['params']))
  return init(jax.random.key(seed))


def _apply(config: ModelConfig, params, inputs: ModelInputs, **kwargs):
  return jax.jit(lambda p, x: Transformer(config).apply({'params': p}, x, **kwargs))(params, inputs)


def _packed(batch=2, length=8, boundary=5, **extra) -> ModelInputs:
  segments = np.ones((batch, length), np.int32)
  segments[:, boundary:] = 2
  segments[1, -1] = 0  # one padding token
  positions = np.concatenate([np.arange(boundary), np.arange(length - boundary)])
  positions = np.broadcast_to(positions, (batch, length)).astype(np.int32)
  tokens = (np.arange(batch * length).reshape(batch, length) * 7 % 40 + 7).astype(np.int32)
  return ModelInputs(tokens=jnp.asarray(tokens), positions=jnp.asarray(positions),
                     segment_ids=jnp.asarray(segments), **extra)


# ----------------------------------------------------------------------------- soft prompts

def test_no_prompt_and_empty_prompt_are_bit_identical_with_the_same_parameter_names():
  config = _tiny(num_sentence_classes=2)
  inputs = _packed(causal=True)
  params = _init(config, inputs)
  with_prompt = inputs.replace(prompt_embeddings=jnp.ones((2, 3, 16)))
  prompt_params = jax.eval_shape(
      lambda: nn.unbox(Transformer(config).init(jax.random.key(0), with_prompt)['params']))
  assert jax.tree.structure(params) == jax.tree.structure(prompt_params)
  plain = _apply(config, params, inputs)
  empty = _apply(config, params, inputs.replace(prompt_embeddings=jnp.zeros((2, 0, 16))))
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(empty)):
    np.testing.assert_array_equal(a, b)


def test_prompt_equals_extra_tokens_that_only_see_each_other():
  """A causal rotary model with P prompt vectors computes what it computes when the vectors are
  fed as token embeddings at position 0 with attention order 0 (they see only each other)."""
  config = _tiny(position='rotary')
  tokens = jnp.array([[9, 12, 30, 41, 8, 17]])
  length, num_prompt = tokens.shape[1], 3
  inputs = ModelInputs(tokens=tokens, positions=jnp.arange(length)[None],
                       segment_ids=jnp.ones_like(tokens), causal=True)
  params = _init(config, inputs)
  prompt = jax.random.normal(jax.random.key(3), (1, num_prompt, 16))
  out = _apply(config, params, inputs.replace(prompt_embeddings=prompt))

  embedded = params['token_embed']['embedding'][tokens]
  manual = ModelInputs(
      tokens=jnp.zeros((1, num_prompt + length), jnp.int32),
      positions=jnp.concatenate([jnp.zeros((1, num_prompt), jnp.int32), inputs.positions], 1),
      segment_ids=jnp.ones((1, num_prompt + length), jnp.int32),
      attn_order=jnp.concatenate([jnp.zeros((1, num_prompt), jnp.int32),
                                  1 + jnp.arange(length)[None]], 1))
  reference = _apply(config, params, manual,
                     token_embeddings=jnp.concatenate([prompt, embedded], 1))
  assert out.logits.shape == (1, length, 48)  # no logits for the prompt
  np.testing.assert_allclose(out.hidden, reference.hidden[:, num_prompt:], atol=1e-5)
  np.testing.assert_allclose(out.logits, reference.logits[:, num_prompt:], atol=1e-4)
  plain = _apply(config, params, inputs)
  assert np.abs(np.asarray(out.logits - plain.logits)).max() > 1e-3  # the prompt matters


@pytest.mark.slow
def test_gradient_reaches_the_prompt_from_every_document_and_no_other_row():
  config = _tiny(position='sinusoidal', num_layers=1)
  inputs = _packed(causal=True)
  params = _init(config, inputs)
  prompt = 0.1 * jax.random.normal(jax.random.key(1), (2, 2, 16))

  @jax.jit
  def grads(prompt):
    """d logits[row, index].sum() / d prompt for the three (row, index) pairs below."""
    def token_output(prompt, row, index):
      out = Transformer(config).apply({'params': params}, inputs.replace(prompt_embeddings=prompt))
      return out.logits[row, index].sum()
    return [jax.grad(token_output)(prompt, row, index) for row, index in [(0, 0), (0, 5), (1, 3)]]

  # Positions 0 and 5 start a document: without the prompt they would see only themselves.
  for (row, _), grad in zip([(0, 0), (0, 5), (1, 3)], grads(prompt)):
    assert np.abs(np.asarray(grad[row])).min() > 0.0, row
    np.testing.assert_array_equal(grad[1 - row], 0.0)  # other rows never see this prompt


def test_prompt_with_wrong_width_names_the_field():
  config = _tiny()
  inputs = _packed()
  params = jax.eval_shape(lambda: nn.unbox(Transformer(config).init(jax.random.key(0), inputs)['params']))
  with pytest.raises(ValueError, match='prompt_embeddings'):
    jax.eval_shape(lambda p: Transformer(config).apply(
        {'params': p}, inputs.replace(prompt_embeddings=jnp.ones((2, 3, 8)))), params)


# ----------------------------------------------------------------------------- decoding

PROMPTS = [[2, 17, 30], [2, 9, 41, 12, 33, 20, 8], [2, 25, 11, 40, 19]]
MAX_NEW = 6


def _decoder(**overrides):
  # A large init spreads the logits, so greedy tokens depend on the whole context.
  config = _tiny(init_std=0.5, **overrides)
  inputs = ModelInputs(tokens=jnp.zeros((1, 4), jnp.int32), positions=jnp.zeros((1, 4), jnp.int32),
                       segment_ids=jnp.ones((1, 4), jnp.int32), causal=True)
  return config, _init(config, inputs, seed=4)


def _reference_greedy(config, params, prompts, max_new):
  """Greedy decoding that recomputes each row's whole prefix every step, right-padded and without
  a cache (an independent layout from decode.py's left padding)."""
  model = Transformer(config)
  width = max(len(p) for p in prompts) + max_new - 1  # the last new token is never read back
  tokens = np.zeros((len(prompts), width), np.int32)
  for row, prompt in enumerate(prompts):
    tokens[row, :len(prompt)] = prompt
  lengths = np.array([len(p) for p in prompts])

  @jax.jit
  def next_logits(tokens, lengths):
    segments = (jnp.arange(width)[None] < lengths[:, None]).astype(jnp.int32)
    inputs = ModelInputs(tokens=tokens, positions=jnp.broadcast_to(jnp.arange(width), tokens.shape),
                         segment_ids=segments, predict_index=(lengths - 1)[:, None], causal=True)
    return model.apply({'params': params}, inputs).logits[:, 0]

  new_tokens, all_logits = [], []
  for step in range(max_new):
    logits = np.asarray(next_logits(tokens, lengths))
    token = logits.argmax(-1)
    if step < max_new - 1:
      tokens[np.arange(len(prompts)), lengths] = token
      lengths = lengths + 1
    new_tokens.append(token)
    all_logits.append(logits)
  return np.stack(new_tokens, 1), np.stack(all_logits, 1)


# Every position kind with scanned layers, and unscanned layers once (the cache is sliced per
# layer either way).
@pytest.mark.parametrize('position,scan', [('learned', True), ('sinusoidal', True),
                                           ('rotary', True), ('rotary', False)])
@pytest.mark.slow
def test_greedy_with_cache_equals_recomputing_the_prefix(position, scan):
  config, params = _decoder(position=position, scan_layers=scan)
  tokens, lengths = decode.left_pad(PROMPTS)
  expected_tokens, expected_logits = _reference_greedy(config, params, PROMPTS, MAX_NEW)
  assert len({tuple(row) for row in expected_tokens}) == 3  # rows differ: a meaningful check
  variants = [True, False] if position == 'learned' else [True]  # False: decode.py's baseline
  for use_cache in variants:
    fn = decode.make_generate_fn(config, max_new_tokens=MAX_NEW, use_cache=use_cache,
                                 return_logits=True)
    out = fn(params, tokens, lengths, jax.random.key(0))
    np.testing.assert_array_equal(out.tokens, expected_tokens)
    np.testing.assert_allclose(out.logits, expected_logits, atol=2e-4, rtol=1e-4)
    np.testing.assert_array_equal(out.lengths, MAX_NEW)
    assert int(out.steps) == MAX_NEW


def test_generation_fills_the_learned_positions_exactly():
  """A prompt of L tokens and max_len - L + 1 new ones uses every learned position once (the
  last new token is never read back): accepted, and cache and recomputation agree with the
  reference; one more new token is refused before compiling."""
  config, params = _decoder(max_len=12)
  prompts = [[2, 17, 30, 5], [2, 9, 41]]
  max_new = config.max_len - 4 + 1
  decode.check_lengths(config, np.array([4, 3]), max_new)
  with pytest.raises(ValueError, match='needs 13 positions .* config.model.max_len=12'):
    decode.check_lengths(config, np.array([4, 3]), max_new + 1)
  tokens, lengths = decode.left_pad(prompts)
  expected, _ = _reference_greedy(config, params, prompts, max_new)
  for use_cache in (True, False):
    out = decode.make_generate_fn(config, max_new_tokens=max_new, use_cache=use_cache,
                                  return_logits=True)(params, tokens, lengths, jax.random.key(0))
    np.testing.assert_array_equal(out.tokens, expected)
    assert np.isfinite(np.asarray(out.logits)).all()


@pytest.mark.parametrize('temperature', [float('nan'), float('inf'), -0.5])
def test_temperature_must_be_finite_and_non_negative(temperature):
  with pytest.raises(ValueError, match='temperature must be finite and >= 0'):
    decode.Sampling(temperature=temperature)


@pytest.fixture(scope='module')
def greedy_run():
  """(config, params, tokens, lengths, greedy new tokens) of the default decoder."""
  config, params = _decoder()
  tokens, lengths = decode.left_pad(PROMPTS)
  out = decode.make_generate_fn(config, max_new_tokens=MAX_NEW)(
      params, tokens, lengths, jax.random.key(0))
  return config, params, tokens, lengths, np.asarray(out.tokens)


def test_top_k_one_and_tiny_top_p_pick_the_argmax():
  logits = jax.random.normal(jax.random.key(5), (256, 48)) * 3.0
  argmax = np.asarray(jnp.argmax(logits, -1))
  pick = jax.jit(decode.sample_tokens, static_argnums=2)
  for sampling in [decode.Sampling(), decode.Sampling(temperature=1.0, top_k=1),
                   decode.Sampling(temperature=1.5, top_p=1e-6),
                   decode.Sampling(temperature=0.7, top_k=4, top_p=1e-6)]:
    np.testing.assert_array_equal(pick(jax.random.key(6), logits, sampling), argmax)


def test_top_k_and_top_p_keep_exactly_the_smallest_set_and_break_ties_like_argmax():
  """Equal logits rank by token id, as argmax ranks them: top-k keeps exactly k tokens and the
  nucleus is exactly the fewest tokens whose probability reaches p (the one crossing p kept)."""
  tied = jnp.array([[0.0, 2.0, 2.0, 0.5, 2.0]])

  def filtered(logits, **settings):
    sampling = decode.Sampling(temperature=1.0, **settings)
    return np.isfinite(np.asarray(decode.filter_logits(logits, sampling)))[0]

  np.testing.assert_array_equal(filtered(tied, top_k=1), [0, 1, 0, 0, 0])
  np.testing.assert_array_equal(filtered(tied, top_k=2), [0, 1, 1, 0, 0])
  np.testing.assert_array_equal(filtered(tied, top_p=1e-6), [0, 1, 0, 0, 0])
  np.testing.assert_array_equal(filtered(tied, top_p=0.31), [0, 1, 1, 0, 0])  # 0.3 each: 2 reach
  np.testing.assert_array_equal(filtered(tied, top_k=2, top_p=0.99), [0, 1, 1, 0, 0])
  halves = jnp.log(jnp.array([[0.2, 0.5, 0.3]]))
  np.testing.assert_array_equal(filtered(halves, top_p=0.5), [0, 1, 0])  # 0.5 reaches 0.5
  np.testing.assert_array_equal(filtered(halves, top_p=0.51), [0, 1, 1])  # 0.3 crosses 0.51
  np.testing.assert_array_equal(filtered(halves, top_p=0.8), [0, 1, 1])
  np.testing.assert_array_equal(filtered(halves, top_p=0.81), [1, 1, 1])
  # Sampling on ties: top_k=1 and a tiny top_p give argmax's token on every draw.
  draws = jnp.broadcast_to(tied, (4000, 5))
  pick = jax.jit(decode.sample_tokens, static_argnums=2)
  for sampling in [decode.Sampling(temperature=1.0, top_k=1),
                   decode.Sampling(temperature=1.0, top_p=1e-6)]:
    np.testing.assert_array_equal(pick(jax.random.key(2), draws, sampling), 1)
  counts = np.bincount(np.asarray(pick(jax.random.key(2), draws,
                                       decode.Sampling(temperature=1.0, top_k=2))), minlength=5)
  assert counts[[0, 3, 4]].sum() == 0 and abs(counts[1] - 2000) < 200, counts


@pytest.mark.slow
def test_top_k_one_generation_equals_greedy_and_sampling_follows_the_seed(greedy_run):
  config, params, tokens, lengths, greedy = greedy_run
  top1 = decode.make_generate_fn(config, max_new_tokens=MAX_NEW,
                                 sampling=decode.Sampling(temperature=1.0, top_k=1))
  np.testing.assert_array_equal(top1(params, tokens, lengths, jax.random.key(3)).tokens, greedy)
  fn = decode.make_generate_fn(config, max_new_tokens=MAX_NEW,
                               sampling=decode.Sampling(temperature=2.0))
  first = np.asarray(fn(params, tokens, lengths, jax.random.key(7)).tokens)
  np.testing.assert_array_equal(fn(params, tokens, lengths, jax.random.key(7)).tokens, first)
  assert not np.array_equal(fn(params, tokens, lengths, jax.random.key(8)).tokens, first)
  assert not np.array_equal(first, greedy)


def test_eos_stops_a_row_and_the_loop_ends_when_every_row_stopped(greedy_run):
  config, params, tokens, lengths, free_tokens = greedy_run
  # EOS: row 0's first token that is new after step 0, so row 0 stops in mid-generation.
  step = next(k for k in range(1, MAX_NEW) if free_tokens[0, k] not in free_tokens[0, :k])
  eos = int(free_tokens[0, step])
  fn = decode.make_generate_fn(config, max_new_tokens=MAX_NEW, eos_id=eos, pad_id=0)
  out = fn(params, tokens, lengths, jax.random.key(0))
  for row in range(3):
    hits = np.flatnonzero(free_tokens[row] == eos)
    stop = hits[0] + 1 if hits.size else MAX_NEW
    assert int(out.lengths[row]) == stop
    np.testing.assert_array_equal(out.tokens[row, :stop], free_tokens[row, :stop])
    np.testing.assert_array_equal(out.tokens[row, stop:], 0)

  # An EOS bias so large that every row ends at once: the loop runs no further step.
  biased = dict(params, lm_bias=params['lm_bias'].at[eos].set(1e4))
  out = fn(biased, tokens, lengths, jax.random.key(0))
  assert int(out.steps) == 1
  np.testing.assert_array_equal(out.lengths, 1)
  np.testing.assert_array_equal(out.tokens[:, 0], eos)
  assert decode.strip(np.asarray(out.tokens[0]), 1, eos) == []


@pytest.mark.slow
def test_suppressed_ids_are_never_chosen_and_the_logits_stay_raw(greedy_run):
  """A token the model would always pick (a huge output bias) is never emitted once suppressed:
  greedy picks the best other token, sampling never draws it; the returned logits are raw."""
  config, params, tokens, lengths, _ = greedy_run
  banned = 7
  biased = dict(params, lm_bias=params['lm_bias'].at[banned].add(50.0))
  for sampling in [decode.Sampling(), decode.Sampling(temperature=1.0)]:
    plain = decode.make_generate_fn(config, max_new_tokens=MAX_NEW, sampling=sampling)(
        biased, tokens, lengths, jax.random.key(1))
    np.testing.assert_array_equal(plain.tokens, banned)  # without suppression: always 7
    out = decode.make_generate_fn(config, max_new_tokens=MAX_NEW, sampling=sampling,
                                  suppress_ids=(banned, 0), return_logits=True)(
                                      biased, tokens, lengths, jax.random.key(1))
    emitted = np.asarray(out.tokens)
    assert not np.isin(emitted, [banned, 0]).any(), emitted
    logits = np.asarray(out.logits)
    np.testing.assert_array_equal(logits.argmax(-1), banned)  # raw: the bias is still there
    if sampling.greedy:
      allowed = logits.copy()
      allowed[..., [banned, 0]] = -np.inf
      np.testing.assert_array_equal(emitted, allowed.argmax(-1))
  with pytest.raises(ValueError, match='suppress_ids'):
    decode.make_generate_fn(config, max_new_tokens=2, suppress_ids=(48,))


# ----------------------------------------------------------------------------- sampling

FIXED_LOGITS = np.log(np.array([0.30, 0.22, 0.18, 0.12, 0.08, 0.06, 0.04], np.float32))


def _expected(sampling: 'decode.Sampling') -> np.ndarray:
  """Hand computation: p ** (1 / T), renormalised over the top-k and the nucleus."""
  probs = np.exp(FIXED_LOGITS.astype(np.float64) / sampling.temperature)
  probs /= probs.sum()
  keep = np.ones_like(probs, bool)
  if sampling.top_k:
    keep[np.argsort(-probs)[sampling.top_k:]] = False
  probs = np.where(keep, probs, 0.0)
  probs /= probs.sum()
  if sampling.top_p < 1:
    order = np.argsort(-probs)
    before = np.cumsum(probs[order]) - probs[order]
    keep = np.zeros_like(keep)
    keep[order[before < sampling.top_p]] = True
    probs = np.where(keep, probs, 0.0)
    probs /= probs.sum()
  return probs


@pytest.mark.parametrize('sampling', [
    dict(temperature=1.0), dict(temperature=0.7), dict(temperature=1.0, top_k=3),
    dict(temperature=1.3, top_p=0.6), dict(temperature=0.9, top_k=5, top_p=0.8)],
                         ids=['t1', 't0.7', 'k3', 'p0.6', 'k5p0.8'])
def test_sampled_frequencies_match_the_filtered_probabilities(sampling):
  from scipy import stats  # pylint: disable=import-outside-toplevel
  sampling = decode.Sampling(**sampling)
  draws = 20000
  logits = jnp.broadcast_to(jnp.asarray(FIXED_LOGITS), (draws, FIXED_LOGITS.size))
  tokens = jax.jit(decode.sample_tokens, static_argnums=2)(jax.random.key(11), logits, sampling)
  counts = np.bincount(np.asarray(tokens), minlength=FIXED_LOGITS.size)
  expected = _expected(sampling)
  np.testing.assert_array_equal(counts[expected == 0], 0)  # filtered tokens never appear
  kept = expected > 0
  result = stats.chisquare(counts[kept], draws * expected[kept] / expected[kept].sum())
  assert result.pvalue > 0.01, (counts, draws * expected)
  np.testing.assert_allclose(counts / draws, expected, atol=0.015)


# ----------------------------------------------------------------------------- bad input

def test_bad_generation_settings_fail_before_compiling():
  config = _tiny()
  example = ModelInputs(tokens=jnp.ones((1, 2), jnp.int32), positions=jnp.zeros((1, 2), jnp.int32),
                        segment_ids=jnp.ones((1, 2), jnp.int32))
  params = jax.eval_shape(lambda: nn.unbox(Transformer(config).init(jax.random.key(0), example)['params']))
  with pytest.raises(ValueError, match='top_p'):
    decode.Sampling(temperature=1.0, top_p=0.0)
  with pytest.raises(ValueError, match='config.model.max_len=64'):
    decode.check_lengths(config, np.array([60]), 8)
  with pytest.raises(ValueError, match='max_new_tokens'):
    decode.make_generate_fn(config, max_new_tokens=0)
  cache = KVCache.create(config, 1, 8)
  inputs = ModelInputs(tokens=jnp.ones((1, 2), jnp.int32), positions=jnp.zeros((1, 2), jnp.int32),
                       segment_ids=jnp.ones((1, 2), jnp.int32))
  with pytest.raises(ValueError, match='causal'):
    jax.eval_shape(lambda p: Transformer(config).apply({'params': p}, inputs, cache=cache), params)


@pytest.mark.parametrize('objective,causal', [('clm', True), ('mlm', False)])
def test_generate_command_accepts_only_causal_runs(objective, causal, tmp_path):
  import importlib  # pylint: disable=import-outside-toplevel

  from data.vocab import toy_vocab  # pylint: disable=import-outside-toplevel
  from downstream import generation as generate_tool  # pylint: disable=import-outside-toplevel
  from training import experiment  # pylint: disable=import-outside-toplevel

  config = importlib.import_module(f'configs.{objective}').get_config('tiny')
  config.data.vocab_size = 64
  exp = experiment.build(config, str(tmp_path), data=False, vocab=toy_vocab(64))
  if causal:
    generate_tool.check_causal(exp)
  else:
    with pytest.raises(ValueError, match="config.objective='mlm'.*not a causal LM"):
      generate_tool.check_causal(exp)


def test_prompts_come_from_flags_then_file_lines(tmp_path):
  from downstream import generation as generate_tool  # pylint: disable=import-outside-toplevel
  path = tmp_path / 'prompts.txt'
  path.write_text('first line\n\n  \nsecond line\n', encoding='utf-8')
  assert generate_tool.read_prompts(['a'], str(path)) == ['a', 'first line', 'second line']
  with pytest.raises(ValueError, match='--prompt_file'):
    generate_tool.read_prompts([], str(tmp_path / 'missing.txt'))
  with pytest.raises(ValueError, match='--prompt'):
    generate_tool.read_prompts([], None)


@pytest.fixture(scope='module')
def text_run(tmp_path_factory):
  """(exp, params) of a 1-layer causal run with a SentencePiece tokenizer trained on toy text."""
  from configs import clm  # pylint: disable=import-outside-toplevel
  from data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  from training import experiment  # pylint: disable=import-outside-toplevel

  tmp_path = tmp_path_factory.mktemp('text_run')
  words = ['return', 'the', 'value', 'of', 'a', 'list', 'new', 'object', 'default', 'number']
  texts = [' '.join(words[(i * j) % 10] for j in range(12)) + '.' for i in range(300)]
  path = str(tmp_path / 'tokenizer.model')
  with open(path, 'wb') as f:
    f.write(tokenizer_lib.train_model(texts, 320, log_path=path + '.log'))  # 256 byte pieces + words
  config = clm.get_config('tiny')
  config.data.vocab_size = tokenizer_lib.Tokenizer(path).size
  config.model.update(num_layers=1, embed_dim=32, num_heads=2, mlp_dim=64, init_std=0.5)
  exp = experiment.build(config, str(tmp_path), data=False, tokenizer_path=path)
  params = jax.jit(lambda key: nn.unbox(exp.init_params_fn()(key)))(jax.random.key(0))
  return exp, params


@pytest.mark.slow
def test_generate_texts_batches_prompts_and_decodes_only_the_continuation(text_run):
  from downstream import generation as generate_tool  # pylint: disable=import-outside-toplevel

  exp, params = text_run
  vocab = exp.tokenizer.vocab
  suppressed = generate_tool.suppressed_ids(vocab)
  assert suppressed == [i for i in range(7) if i != vocab.eos_id]  # pad unk bos cls sep mask
  # BOS made the likeliest token everywhere: the command never emits it, nor any other special.
  params = dict(params, lm_bias=params['lm_bias'].at[vocab.bos_id].add(30.0))
  prompts = ['return the', 'a new list of', 'default']
  outputs, timing = generate_tool.generate_texts(
      exp, params, prompts, max_new_tokens=5, sampling=decode.Sampling(), batch_size=2,
      stop_at_eos=False)
  assert timing['new_tokens'] == 15 and timing['tokens_per_sec'] > 0
  # The same continuations from the library, one prompt at a time (no batch-mates, no padding).
  for text, output in zip(prompts, outputs):
    ids = [vocab.bos_id] + exp.tokenizer.encode(text)
    assert decode.generate(exp.model_config, params, [ids], jax.random.key(0),
                           max_new_tokens=5)[0][0] == vocab.bos_id  # unsuppressed: BOS first
    new = decode.generate(exp.model_config, params, [ids], jax.random.key(0), max_new_tokens=5,
                          suppress_ids=suppressed)[0]
    assert len(new) == 5 and not set(new) & set(suppressed)
    assert exp.tokenizer.decode(ids) + output == exp.tokenizer.decode(ids + new)


# ----------------------------------------------------------------------------- prompting

def _hand_score(exp, params, ids: list[int], num_scored: int) -> float:
  """Sum of log p(ids[t] | ids[:t]) over the last `num_scored` tokens, from one unpadded
  forward pass (float64 log-softmax)."""
  tokens = jnp.asarray([ids])
  out = _apply(exp.model_config, params, ModelInputs(
      tokens=tokens, positions=jnp.arange(len(ids))[None], segment_ids=jnp.ones_like(tokens),
      causal=True))
  logits = np.asarray(out.logits[0], np.float64)
  log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1,
                                     keepdims=True)) - logits.max(-1, keepdims=True)
  return float(sum(log_probs[t - 1, ids[t]] for t in range(len(ids) - num_scored, len(ids))))


@pytest.mark.slow
def test_label_word_scores_are_the_summed_log_probs_after_the_same_context(text_run):
  """Each row's score is the sum of its word's token log-probabilities after `[bos] context`,
  by hand; a word without a leading space keeps the pieces it has in the running text (no
  word-start marker); a context cut to fit `seq_len` keeps the same tokens for every word."""
  from downstream import prompting  # pylint: disable=import-outside-toplevel

  exp, params = text_run
  tokenizer = exp.tokenizer
  contexts = ['return the value of a list\nLabel:', 'default number of a new object.\nLabel:']
  words = [' value', ' new list of the object', 'list']
  for seq_len in (32, 10):  # 10 cuts both contexts from the left
    arrays = prompting.encode_choices(tokenizer, contexts, words, seq_len)
    totals, counts = prompting.make_scorer(exp.model_config)(params, arrays)
    for row in range(len(contexts) * len(words)):
      context, word = contexts[row // len(words)], words[row % len(words)]
      joint = tokenizer.encode(context + word)
      word_ids = joint[len(tokenizer.encode(context)):]
      if word == ' value':
        assert word_ids == tokenizer.encode('value')  # ' value' -> its word-start piece
      if word == 'list':
        assert word_ids != tokenizer.encode('list')  # no word-start marker after ':'
      n = int(arrays['segment_ids'][row].sum())
      ids = [int(t) for t in arrays['tokens'][row, :n]]
      assert ids[-len(word_ids):] == word_ids and int(counts[row]) == len(word_ids)
      context_ids = tokenizer.encode(context)
      longest = max(len(tokenizer.encode(context + w)) for w in words) - len(context_ids)
      kept = context_ids[max(0, len(context_ids) - (seq_len - 1 - longest)):]
      assert ids == [tokenizer.vocab.bos_id, *kept, *word_ids]  # the same context for every word
      if seq_len == 10:
        assert len(kept) < len(context_ids)
      np.testing.assert_allclose(float(totals[row]), _hand_score(exp, params, ids, len(word_ids)),
                                 rtol=1e-5, atol=1e-4)
