"""The lm-evaluation-harness adapter on a tiny random model with a real SentencePiece
tokenizer, through local YAML tasks over JSON lines files written here (no download):
log-likelihoods equal token_nll, PLL equals a loop of masked passes, multiple choice picks the
highest score, rolling perplexity covers every token once, generation is the greedy decode,
and a --limit run is reproducible."""

from __future__ import annotations

import functools
import json
import os
import sys
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip('lm_eval')

from lm_eval.api.instance import Instance  # pylint: disable=wrong-import-position

from downstream import likelihood, lm_eval_adapter  # pylint: disable=wrong-import-position
from models import decode  # pylint: disable=wrong-import-position
from models.config import ModelConfig  # pylint: disable=wrong-import-position
from models.transformer import ModelInputs, Transformer  # pylint: disable=wrong-import-position
from objectives import base, clm  # pylint: disable=wrong-import-position
from tests import downstream_helpers as helpers  # pylint: disable=wrong-import-position
from tools import lm_eval as lm_eval_tool  # pylint: disable=wrong-import-position

SEQ_LEN = 32


@pytest.fixture(scope='module')
def tokenizer(tmp_path_factory):
  from data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel

  path = helpers.train_tokenizer(str(tmp_path_factory.mktemp('tok') / 'tokenizer.model'))
  return tokenizer_lib.Tokenizer(path)


def _model(tokenizer, objective: str, **overrides):
  """A PretrainedLM over a random 1-layer model of `objective`'s likelihood rule."""
  values = dict(vocab_size=tokenizer.size, num_layers=1, embed_dim=32, num_heads=2, mlp_dim=64,
                max_len=SEQ_LEN, init_std=0.5)
  values.update(overrides)
  config = ModelConfig(**values)
  tokens = jnp.ones((1, 8), jnp.int32)
  inputs = ModelInputs(tokens=tokens, positions=jnp.arange(8)[None], segment_ids=tokens)
  params = jax.jit(lambda key: nn.unbox(Transformer(config).init(key, inputs))['params'])(
      jax.random.key(3))
  scorer = likelihood.Scorer(params=params, model_config=config, vocab=tokenizer.vocab,
                             objective=objective, seq_len=SEQ_LEN)
  pretrained = types.SimpleNamespace(workdir='runs/toy', step=5, objective=objective,
                                     tokenizer=tokenizer)
  return lm_eval_adapter.PretrainedLM('runs/toy', batch_size=4, scorer=scorer,
                                      pretrained=pretrained)


@functools.lru_cache(maxsize=None)
def _forward(config: ModelConfig):
  return jax.jit(lambda params, inputs: Transformer(config).apply({'params': params}, inputs))


def _padded(ids) -> dict:
  """A one-row batch of `ids` padded to SEQ_LEN (one compilation for every hand pass)."""
  pad = lambda values: jnp.asarray([list(values) + [0] * (SEQ_LEN - len(ids))], jnp.int32)
  return {'tokens': pad(ids), 'positions': pad(range(len(ids))), 'segment_ids': pad([1] * len(ids))}


def _requests(kind, arguments):
  return [Instance(request_type=kind, doc={}, arguments=args, idx=0) for args in arguments]


PAIRS = [('the quick brown fox', ' jumps over'), ('apple banana', ' cherry'),
         ('river mountain ', 'ocean'), ('', 'the lazy dog')]


def test_loglikelihood_equals_the_objectives_token_nll(tokenizer):
  """(context, continuation) text -> -sum of clm's token_nll over the continuation's pieces
  after [bos] + context; trailing context spaces move to the continuation."""
  lm = _model(tokenizer, 'clm')
  results = lm.loglikelihood(_requests('loglikelihood', PAIRS))
  for (context, continuation), (logprob, _) in zip(PAIRS, results):
    spaces = len(context) - len(context.rstrip())
    context, continuation = context.rstrip(), context[len(context.rstrip()):] + continuation
    assert spaces == 0 or continuation.startswith(' ')
    context_ids = tokenizer.encode(context) if context else []
    ids = [tokenizer.vocab.bos_id] + tokenizer.encode(context + continuation)
    assert ids[:1 + len(context_ids)] == [tokenizer.vocab.bos_id] + context_ids
    batch = _padded(ids)
    inputs, _ = clm.CausalLM(loss_chunk=8).prepare(None, batch, base.base_inputs(batch))
    nll = np.asarray(_forward(lm.scorer.model_config)(lm.scorer.params, inputs).token_nll[0])
    expected = -nll[len(context_ids):len(ids) - 1].sum()
    np.testing.assert_allclose(logprob, expected, rtol=1e-5, atol=1e-5)


def test_pseudo_log_likelihood_equals_a_loop_of_masked_passes(tokenizer):
  lm = _model(tokenizer, 'mlm', norm='post')
  vocab = tokenizer.vocab
  (logprob, greedy), = lm.loglikelihood(_requests('loglikelihood', [PAIRS[0]]))
  context_ids, continuation_ids = lm.encode_pair(*PAIRS[0])
  ids = [vocab.bos_id, *context_ids, *continuation_ids, vocab.eos_id]
  total, all_argmax = 0.0, True
  for t in range(len(continuation_ids)):
    at = 1 + len(context_ids) + t
    batch = _padded(ids[:at] + [vocab.mask_id] + ids[at + 1:])
    logits = _forward(lm.scorer.model_config)(lm.scorer.params, ModelInputs(
        tokens=batch['tokens'], positions=batch['positions'],
        segment_ids=batch['segment_ids'])).logits[0, at]
    total += float(jax.nn.log_softmax(logits)[ids[at]])
    all_argmax &= int(jnp.argmax(logits)) == ids[at]
  np.testing.assert_allclose(logprob, total, rtol=1e-5, atol=1e-5)
  assert greedy == all_argmax
  with pytest.raises(ValueError, match='not a causal LM'):
    lm.generate_until(_requests('generate_until', [('a', {'until': ['\n']})]))


def test_rolling_windows_cover_every_token_once(tokenizer):
  """A text longer than the run's window: disjoint windows whose scored pieces are the text's
  pieces in order, each conditioned on the pieces right before it (none for the first)."""
  lm = _model(tokenizer, 'clm')
  text = ' '.join([helpers.FILLER] * 8)
  ids = tokenizer.encode(text)
  windows = lm.rolling_windows(text)
  assert len(ids) > SEQ_LEN and len(windows) > 1
  assert [t for _, scored in windows for t in scored] == ids
  start = 0
  for context, scored in windows:
    assert context == ids[start - len(context):start] if start else context == []
    assert len(context) + len(scored) <= SEQ_LEN - 1  # + [bos]
    start += len(scored)
  total, = lm.loglikelihood_rolling(_requests('loglikelihood_rolling', [(text,)]))
  np.testing.assert_allclose(total, sum(r.logprob for r in lm.scorer.score(windows)), rtol=1e-6)


def _task_files(folder) -> None:
  """Three YAML tasks over JSON lines files: multiple choice, rolling perplexity, generation."""
  records = {
      'choice': [{'text': f'{w} {w} and', 'choices': [' apple', ' river', ' plum'], 'label': i % 3}
                 for i, w in enumerate(helpers.WORDS[0] + helpers.WORDS[1])],
      'text': [{'text': f'{helpers.FILLER} {w}.'} for w in helpers.WORDS[0][:4]],
      'gen': [{'question': f'{w} banana', 'answer': w} for w in helpers.WORDS[1][:4]]}
  for name, rows in records.items():
    helpers.write_jsonl(os.path.join(folder, f'{name}.jsonl'), rows)
  common = lambda task, name: (f'task: {task}\ndataset_path: json\ndataset_kwargs:\n'
                               f'  data_files:\n    test: {os.path.join(folder, name)}.jsonl\n'
                               'test_split: test\n')
  yaml = {
      'toy_choice': common('toy_choice', 'choice') + (
          'output_type: multiple_choice\ndoc_to_text: "{{text}}"\ndoc_to_choice: "{{choices}}"\n'
          'doc_to_target: label\nmetric_list:\n  - metric: acc\n'),
      'toy_rolling': common('toy_rolling', 'text') + (
          'output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{text}}"\n'
          'metric_list:\n  - metric: word_perplexity\n'),
      'toy_gen': common('toy_gen', 'gen') + (
          'output_type: generate_until\ndoc_to_text: "{{question}}"\ndoc_to_target: "{{answer}}"\n'
          'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 6\n  do_sample: false\n'
          'metric_list:\n  - metric: exact_match\n')}
  for name, text in yaml.items():
    with open(os.path.join(folder, f'{name}.yaml'), 'w', encoding='utf-8') as f:
      f.write(text)


def test_harness_run_on_local_tasks_is_reproducible(tokenizer, tmp_path, monkeypatch):
  """tools/lm_eval.py's evaluate on the three local tasks: accuracy is the rate at which the
  label's option has the highest loglikelihood, perplexity is exp(-sum of rolling scores /
  words), generation is the greedy decode cut at the stop string; the results file is the
  harness's JSON, and a second --limit run gives the same results."""
  monkeypatch.setenv('HF_DATASETS_OFFLINE', '1')
  monkeypatch.setenv('HF_HOME', str(tmp_path / 'hf'))
  tasks = tmp_path / 'tasks'
  tasks.mkdir()
  _task_files(str(tasks))
  lm = _model(tokenizer, 'clm')
  monkeypatch.setattr(likelihood, 'load', lambda workdir, step: (lm.scorer, lm.pretrained))
  workdir = str(tmp_path / 'run')
  os.makedirs(workdir)
  run = lambda: lm_eval_tool.evaluate(workdir, ['toy_choice', 'toy_rolling', 'toy_gen'],
                                      limit=6, include_path=str(tasks), batch_size=4)
  results, path = run()
  assert path == os.path.join(workdir, 'lm_eval', 'results_step5.json')
  with open(path, encoding='utf-8') as f:
    written = json.load(f)
  assert written['results'] == json.loads(json.dumps(results['results']))
  assert 'samples' not in written and written['n-samples']['toy_choice']['effective'] == 6

  choices = [json.loads(line) for line in open(tasks / 'choice.jsonl', encoding='utf-8')][:6]
  right = 0
  for doc in choices:
    scores = [s for s, _ in lm.loglikelihood(_requests(
        'loglikelihood', [(doc['text'], c) for c in doc['choices']]))]
    right += int(np.argmax(scores) == doc['label'])
  assert results['results']['toy_choice']['acc,none'] == pytest.approx(right / 6)

  texts = [json.loads(line)['text'] for line in open(tasks / 'text.jsonl', encoding='utf-8')]
  total = sum(lm.loglikelihood_rolling(_requests('loglikelihood_rolling', [(t,) for t in texts])))
  words = sum(len(t.split()) for t in texts)
  assert results['results']['toy_rolling']['word_perplexity,none'] == pytest.approx(
      np.exp(-total / words), rel=1e-5)

  vocab = tokenizer.vocab
  questions = [json.loads(line) for line in open(tasks / 'gen.jsonl', encoding='utf-8')]
  outputs = lm.generate_until(_requests('generate_until', [
      (q['question'], {'until': ['\n'], 'max_gen_toks': 6}) for q in questions]))
  prompts = [[vocab.bos_id] + tokenizer.encode(q['question']) for q in questions]
  generated = decode.generate(lm.scorer.model_config, lm.scorer.params, prompts,
                              jax.random.key(0), max_new_tokens=6, eos_id=vocab.eos_id,
                              suppress_ids=lm_eval_adapter.generation.suppressed_ids(vocab))
  for prompt, new, output in zip(prompts, generated, outputs):
    assert output == tokenizer.decode(prompt + new)[len(tokenizer.decode(prompt)):].split('\n')[0]
  assert results['results']['toy_gen']['exact_match,none'] == pytest.approx(
      np.mean([o == q['answer'] for o, q in zip(outputs, questions)]))
  again, _ = run()
  assert again['results'] == results['results']


def test_missing_harness_is_a_one_line_error(monkeypatch):
  monkeypatch.setitem(sys.modules, 'lm_eval', None)
  with pytest.raises(ImportError, match=r"pip install -e '\.\[eval\]'"):
    lm_eval_tool.require_harness()
