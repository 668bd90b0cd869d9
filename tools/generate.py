"""Generate text from a causal pretraining run: greedy or sampled, batched, with a key/value cache.

  python tools/generate.py --workdir runs/clm --prompt 'Return the number of'
  python tools/generate.py --workdir runs/clm --prompt_file prompts.txt --temperature 0.8 \\
      --top_p 0.9 --max_new_tokens 128 --step 300

Each prompt is `[bos] + its pieces`, like the documents the model was trained on; a row stops
at EOS or after --max_new_tokens. Prints each prompt's continuation, then the decode speed in
new tokens per second (compilation excluded; it is printed apart). See docs/generation.md.
The run is read from its workdir alone (training/workdir.py): its own tokenizer.model, never
a path or coordinator address its config.json names.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # pylint: disable=wrong-import-position

from downstream.generation import (  # pylint: disable=wrong-import-position
    check_causal, encode_prompts, generate_texts, load_run, read_prompts)
from tools import cli  # pylint: disable=wrong-import-position

_COMMAND = 'generate.py'

_WORKDIR = flags.DEFINE_string('workdir', None, 'The causal pretraining run to generate from.')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
_PROMPT = flags.DEFINE_multi_string('prompt', [], 'A prompt; repeat the flag for several.')
_PROMPT_FILE = flags.DEFINE_string('prompt_file', None, 'A text file with one prompt per line.')
_MAX_NEW = flags.DEFINE_integer('max_new_tokens', 64, 'New tokens per prompt at most.')
_TEMPERATURE = flags.DEFINE_float('temperature', 0.0, '0 is greedy decoding; > 0 samples.')
_TOP_K = flags.DEFINE_integer('top_k', 0, 'Sample among the k most likely tokens (0: off).')
_TOP_P = flags.DEFINE_float('top_p', 1.0, 'Sample from the nucleus of this probability (1: off).')
_SEED = flags.DEFINE_integer('seed', 0, 'Sampling seed: the same seed gives the same text.')
_BATCH = flags.DEFINE_integer('batch_size', 8, 'Prompts decoded together.')
_CACHE = flags.DEFINE_bool('cache', True, 'Use the key/value cache (--nocache recomputes the '
                           'whole sequence every step, for comparison).')
_STOP_AT_EOS = flags.DEFINE_bool('stop_at_eos', True, 'End a row at its end-of-sequence token.')


def main(argv):
  cli.start(argv)
  cli.require_workdir(
      _COMMAND, _WORKDIR.value,
      '--workdir is required: the causal pretraining run (e.g. --workdir runs/clm).')
  from models import decode  # pylint: disable=import-outside-toplevel
  from training import experiment  # pylint: disable=import-outside-toplevel

  try:
    texts = read_prompts(_PROMPT.value, _PROMPT_FILE.value)
    sampling = decode.Sampling(temperature=_TEMPERATURE.value, top_k=_TOP_K.value,
                               top_p=_TOP_P.value)
    if _MAX_NEW.value < 1 or _BATCH.value < 1:
      raise ValueError('--max_new_tokens and --batch_size must be at least 1.')
    exp = load_run(_WORKDIR.value)
    check_causal(exp)
    decode.check_lengths(exp.model_config, [len(p) for p in encode_prompts(exp, texts)],
                         _MAX_NEW.value)
    params, step, exp = experiment.restore_params(_WORKDIR.value, _STEP.value, exp=exp)
    outputs, timing = generate_texts(
        exp, params, texts, max_new_tokens=_MAX_NEW.value, sampling=sampling,
        seed=_SEED.value, batch_size=_BATCH.value, use_cache=_CACHE.value,
        stop_at_eos=_STOP_AT_EOS.value)
  except (ValueError, OSError) as error:
    cli.fail(_COMMAND, cli.one_line(error), 2)
  for text, output in zip(texts, outputs):
    print(f'>>> {text}\n{text}{output}\n', flush=True)
  print(f'step {step} | {len(texts)} prompts | {int(timing["new_tokens"])} new tokens in '
        f'{timing["decode_seconds"]:.2f} s: {timing["tokens_per_sec"]:.1f} tokens/s '
        f'(cache {"on" if _CACHE.value else "off"}; compiling took '
        f'{timing["compile_seconds"]:.1f} s)', flush=True)


if __name__ == '__main__':
  app.run(main)
