"""SentencePiece tokenizer: load a user's model, resume a run's model, or train and cache one.

Trained models are unigram with byte fallback and identity normalisation, so every string
round-trips exactly (decode(encode(s)) == s) and unseen characters become byte pieces.
Unigram rather than BPE: it trains faster at these vocabulary sizes and is what T5, XLNet
and ALBERT's SentencePiece models use.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import uuid
from collections.abc import Iterable

import ml_collections
import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as model_pb2
from etils import epath

from data.cache import cache_root
from data.vocab import Vocab, whitespace_flags

MODEL_FILENAME = 'tokenizer.model'
SETTINGS_FILENAME = 'tokenizer.json'  # what tokenizer.model was trained for
SPECIAL_PIECES = ('[CLS]', '[SEP]', '[MASK]')
# Whitespace other than the space, kept as pieces of its own so that no piece spans a line
# break and the piece after one starts a word (BERT's tokenizer splits words there too).
WHITESPACE_PIECES = ('\n', '\t')
MODEL_TYPES = ('unigram', 'bpe', 'char', 'word')
_CONTROL_PIECES = {'unk': '<unk>', 'bos': '<s>', 'eos': '</s>', 'pad': '<pad>'}
# Settings that change the trained model; with the config's (`trainer_settings`) the cache key.
TRAINER_SETTINGS = dict(
    byte_fallback=True, normalization_rule_name='identity',
    remove_extra_whitespaces=False, add_dummy_prefix=True, allow_whitespace_only_pieces=True,
    split_digits=True, character_coverage=0.9995, max_sentence_length=1 << 16,
    input_sentence_size=200_000, shuffle_input_sentence=True, hard_vocab_limit=False,
    pad_id=0, unk_id=1, bos_id=2, eos_id=3)
_TRAINER_SEED = 0
# Fixed rather than os.cpu_count(): the trained pieces depend on the thread count, and every
# host (and every later run) must train the very same model from the same text.
_TRAINER_THREADS = 8


class Tokenizer:
  """A SentencePiece model with the `Vocab` facts the objectives need."""

  def __init__(self, path: str, model_proto: bytes | None = None):
    self.path = str(path)
    if model_proto is None:
      model_proto = epath.Path(path).read_bytes()
    self._sp = spm.SentencePieceProcessor()
    self._sp.LoadFromSerializedProto(model_proto)
    self.vocab = _vocab_of(self._sp, model_proto)

  @property
  def size(self) -> int:
    return self.vocab.size

  def encode(self, text: str) -> list[int]:
    """Piece ids of `text`, without bos/eos (packing adds those)."""
    return self._sp.EncodeAsIds(text)

  def encode_batch(self, texts: list[str], num_threads: int | None = None) -> list[list[int]]:
    """Piece ids of several texts in one call, on `num_threads` threads (default: all cores)."""
    return self._sp.Encode(texts, out_type=int, num_threads=num_threads or os.cpu_count() or 1)

  def decode(self, ids: Iterable[int]) -> str:
    """Text of piece ids; control ids (pad, bos, eos) decode to nothing."""
    return self._sp.DecodeIds([int(i) for i in ids])

  def __repr__(self) -> str:
    return f'Tokenizer({self.path!r}, size={self.size})'


def _vocab_of(sp: spm.SentencePieceProcessor, model_proto: bytes) -> Vocab:
  """Vocab of a loaded model; pieces it lacks ([CLS] in a user's model, say) get id -1."""
  size = sp.GetPieceSize()
  user_defined = model_pb2.ModelProto.SentencePiece.USER_DEFINED
  pieces = model_pb2.ModelProto.FromString(model_proto).pieces
  # Byte pieces (<0x41>) and a user's own symbols are ordinary text; control, unknown and
  # the [CLS]/[SEP]/[MASK] pieces are not.
  is_special = np.array([sp.IsControl(i) or sp.IsUnknown(i) or sp.IsUnused(i)
                         or (pieces[i].type == user_defined and pieces[i].piece in SPECIAL_PIECES)
                         for i in range(size)], np.bool_)
  # A word starts at a space ('▁') or at a line break or tab piece.
  word_start = np.array([sp.IdToPiece(i).startswith(('▁', *WHITESPACE_PIECES))
                         for i in range(size)], np.bool_)

  def piece_id(piece: str) -> int:
    index = sp.PieceToId(piece)
    return index if sp.IdToPiece(index) == piece else -1

  return Vocab(size=size, pad_id=sp.pad_id(), unk_id=sp.unk_id(), bos_id=sp.bos_id(),
               eos_id=sp.eos_id(), cls_id=piece_id('[CLS]'), sep_id=piece_id('[SEP]'),
               mask_id=piece_id('[MASK]'), is_special=is_special, word_start=word_start,
               is_whitespace=whitespace_flags([sp.IdToPiece(i) for i in range(size)]))


def _capped_texts(texts: Iterable[str], max_chars: int) -> list[str]:
  """The first documents of `texts` up to `max_chars` characters in all."""
  kept, total = [], 0
  for text in texts:
    if total >= max_chars:
      break
    text = text[:max_chars - total]
    kept.append(text)
    total += len(text)
  return kept


def trainer_settings(data_config: ml_collections.ConfigDict) -> dict:
  """SentencePiece trainer settings: the fixed ones plus the config's model type and symbols.

  Configs older than these keys train what they always did (unigram, no line-break pieces).
  """
  model_type = data_config.get('tokenizer_model_type', 'unigram')
  if model_type not in MODEL_TYPES:
    raise ValueError(f'config.data.tokenizer_model_type={model_type!r} is not one of '
                     f'{", ".join(repr(t) for t in MODEL_TYPES)}.')
  user = [s.strip() for s in data_config.get('tokenizer_user_symbols', '').split(',') if s.strip()]
  # A user symbol spelled like one of SentencePiece's control pieces (WikiText's literal
  # '<unk>') renames that control piece, so the text keeps its own piece.
  renamed = {f'{name}_piece': f'[{name.upper()}]' for name, piece in _CONTROL_PIECES.items()
             if piece in user}
  whitespace = list(WHITESPACE_PIECES) if 'tokenizer_model_type' in data_config else []
  symbols = list(dict.fromkeys([*SPECIAL_PIECES, *whitespace, *user]))
  return dict(TRAINER_SETTINGS, model_type=model_type, user_defined_symbols=symbols, **renamed)


def train_model(texts: list[str], vocab_size: int, log_path: str | None = None,
                settings: dict | None = None) -> bytes:
  """A serialized SentencePiece model trained in memory on `texts`.

  SentencePiece's refusals (a vocabulary larger than the text supports, say) are one-line
  ValueErrors naming the setting.
  """
  settings = settings or dict(TRAINER_SETTINGS, model_type='unigram',
                              user_defined_symbols=list(SPECIAL_PIECES))
  model = io.BytesIO()
  spm.set_random_generator_seed(_TRAINER_SEED)
  with open(log_path or os.devnull, 'w') as log:
    # SentencePiece redirects the stderr file descriptor for its log; that needs a real one.
    try:
      sys.stderr.fileno()
      log_args = {'logstream': log}
    except (AttributeError, OSError, ValueError):
      log_args = {}
    try:
      spm.SentencePieceTrainer.Train(
          sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
          num_threads=_TRAINER_THREADS, **log_args, **settings)
    except RuntimeError as error:
      reason = str(error).strip().splitlines()[-1] if str(error).strip() else 'failed'
      reason = reason.split('] ')[-1].strip()
      raise ValueError(
          f'SentencePiece cannot train a {settings["model_type"]} tokenizer with '
          f'config.data.vocab_size={vocab_size} on {sum(map(len, texts))} characters ({reason}); '
          'lower config.data.vocab_size or give more text (config.data.tokenizer_max_chars).'
      ) from None
  return model.getvalue()


def _has_checkpoints(workdir: str) -> bool:
  checkpoints = epath.Path(workdir) / 'checkpoints'
  return checkpoints.exists() and any(checkpoints.iterdir())


def load_or_train(data_config: ml_collections.ConfigDict, workdir: str | None,
                  train_texts: Iterable[str]) -> Tokenizer:
  """The run's tokenizer: `config.data.tokenizer`, else workdir's, else a trained and cached one.

  A trained model is cached under the cache root keyed by a hash of the training text it
  saw and the trainer settings, and copied to `workdir/tokenizer.model` so a resumed run
  (or a later evaluation) uses the very same pieces. A workdir's model trained with other
  settings than the config's is replaced when the workdir has no checkpoint yet (a run that
  failed before its first save) and is a one-line error otherwise. The pretokenized source
  uses the tokenizer stored with its shards.
  """
  user_path = data_config.tokenizer
  if not user_path and data_config.get('source') == 'pretokenized':
    user_path = os.path.join(os.path.expanduser(data_config.pretokenized_dir), MODEL_FILENAME)
    if not epath.Path(user_path).exists():
      raise FileNotFoundError(f'config.data.pretokenized_dir holds no {MODEL_FILENAME} '
                              f'({user_path}): write the shards again with tools/pretokenize.py, '
                              'or point config.data.tokenizer at the model that made them.')
  if user_path:
    if not epath.Path(user_path).exists():
      raise FileNotFoundError(f'config.data.tokenizer={user_path!r} does not exist; point it at '
                              'a SentencePiece .model file or set it to "" to train one.')
    return Tokenizer(user_path)
  if data_config.vocab_size < 300:
    raise ValueError(f'config.data.vocab_size={data_config.vocab_size} is too small: 256 byte '
                     'pieces and 7 special pieces come first; use at least 300.')
  if data_config.tokenizer_max_chars < 1:
    raise ValueError('config.data.tokenizer_max_chars must be positive.')
  settings = trainer_settings(data_config)
  user_symbols = settings['user_defined_symbols'][len(SPECIAL_PIECES):]
  resumed = epath.Path(workdir) / MODEL_FILENAME if workdir else None
  wanted = {'vocab_size': data_config.vocab_size, 'model_type': settings['model_type'],
            'user_symbols': user_symbols}
  if resumed is not None and resumed.exists():
    model = resumed.read_bytes()
    # What the model was trained for: the sidecar written with it (SentencePiece stores the
    # size it reached, not the one asked for); runs from before the sidecar are not checked.
    sidecar = resumed.parent / SETTINGS_FILENAME
    trained = json.loads(sidecar.read_text()) if sidecar.exists() else wanted
    changed = [f'{key} {trained.get(key)!r} (config: {value!r})' for key, value in wanted.items()
               if trained.get(key) != value]
    if not changed:
      return Tokenizer(os.fspath(resumed), model)
    if _has_checkpoints(workdir):
      raise ValueError(f'{resumed} was trained with {", ".join(changed)}; resume with the run\'s '
                       'own tokenizer settings, or start a new workdir.')
    # A run that failed before its first checkpoint left it: train the configured one.

  texts = _capped_texts(train_texts, data_config.tokenizer_max_chars)
  if not any(text.strip() for text in texts):
    raise ValueError('The training split has no text to train a tokenizer on; check '
                     'config.data.source and its files.')
  key = hashlib.sha256()
  legacy = settings == dict(TRAINER_SETTINGS, model_type='unigram',
                            user_defined_symbols=list(SPECIAL_PIECES))
  # The settings of configs made before the tokenizer keys hash as they did, so their cache
  # entries stay valid.
  key_settings = ({'model_type': 'unigram', **TRAINER_SETTINGS,
                   'user_defined_symbols': list(SPECIAL_PIECES)} if legacy else settings)
  key.update(json.dumps([data_config.vocab_size, key_settings, _TRAINER_SEED,
                         _TRAINER_THREADS, spm.__version__]).encode('utf-8'))
  for text in texts:
    key.update(hashlib.sha256(text.encode('utf-8')).digest())
  cache_dir = os.path.join(cache_root(), 'tokenizers')
  cached = os.path.join(cache_dir, f'spm_{data_config.vocab_size}_{key.hexdigest()[:16]}.model')
  if os.path.exists(cached):
    with open(cached, 'rb') as f:
      model = f.read()
  else:
    os.makedirs(cache_dir, exist_ok=True)
    model = train_model(texts, data_config.vocab_size, log_path=cached[:-len('.model')] + '.log',
                        settings=settings)
    _write_atomically(epath.Path(cached), model)
  if resumed is None:
    return Tokenizer(cached, model)
  resumed.parent.mkdir(parents=True, exist_ok=True)
  _write_atomically(resumed, model)
  _write_atomically(resumed.parent / SETTINGS_FILENAME, json.dumps(wanted).encode('utf-8'))
  return Tokenizer(os.fspath(resumed), model)


def _write_atomically(path: epath.Path, data: bytes) -> None:
  """Writes `data` to a uniquely named sibling (unique across hosts sharing the folder), then
  renames it into place, so a concurrent reader or trainer never sees half a file."""
  temporary = path.parent / f'{path.name}.{uuid.uuid4().hex}.tmp'
  temporary.write_bytes(data)
  temporary.replace(path)

