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

from data.corpora import cache_root
from data.vocab import Vocab

MODEL_FILENAME = 'tokenizer.model'
SPECIAL_PIECES = ('[CLS]', '[SEP]', '[MASK]')
# Settings that change the trained model; part of the cache key.
TRAINER_SETTINGS = dict(
    model_type='unigram', byte_fallback=True, normalization_rule_name='identity',
    remove_extra_whitespaces=False, add_dummy_prefix=True, allow_whitespace_only_pieces=True,
    split_digits=True, character_coverage=0.9995, max_sentence_length=1 << 16,
    input_sentence_size=200_000, shuffle_input_sentence=True, hard_vocab_limit=False,
    pad_id=0, unk_id=1, bos_id=2, eos_id=3, user_defined_symbols=list(SPECIAL_PIECES))
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

  def encode_batch(self, texts: list[str]) -> list[list[int]]:
    """Piece ids of several texts, encoded on all cores."""
    return self._sp.Encode(texts, out_type=int, num_threads=os.cpu_count() or 1)

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
  # Byte pieces (<0x41>) are ordinary text; control, unknown and user-defined ones are not.
  is_special = np.array([sp.IsControl(i) or sp.IsUnknown(i) or sp.IsUnused(i)
                         or pieces[i].type == user_defined for i in range(size)], np.bool_)
  word_start = np.array([sp.IdToPiece(i).startswith('▁') for i in range(size)], np.bool_)

  def piece_id(piece: str) -> int:
    index = sp.PieceToId(piece)
    return index if sp.IdToPiece(index) == piece else -1

  return Vocab(size=size, pad_id=sp.pad_id(), unk_id=sp.unk_id(), bos_id=sp.bos_id(),
               eos_id=sp.eos_id(), cls_id=piece_id('[CLS]'), sep_id=piece_id('[SEP]'),
               mask_id=piece_id('[MASK]'), is_special=is_special, word_start=word_start)


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


def train_model(texts: list[str], vocab_size: int, log_path: str | None = None) -> bytes:
  """A serialized SentencePiece model trained in memory on `texts`."""
  model = io.BytesIO()
  spm.set_random_generator_seed(_TRAINER_SEED)
  with open(log_path or os.devnull, 'w') as log:
    # SentencePiece redirects the stderr file descriptor for its log; that needs a real one.
    try:
      sys.stderr.fileno()
      log_args = {'logstream': log}
    except (AttributeError, OSError, ValueError):
      log_args = {}
    spm.SentencePieceTrainer.Train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
        num_threads=_TRAINER_THREADS, **log_args, **TRAINER_SETTINGS)
  return model.getvalue()


def load_or_train(data_config: ml_collections.ConfigDict, workdir: str | None,
                  train_texts: Iterable[str]) -> Tokenizer:
  """The run's tokenizer: `config.data.tokenizer`, else workdir's, else a trained and cached one.

  A trained model is cached under the cache root keyed by a hash of the training text it
  saw and the trainer settings, and copied to `workdir/tokenizer.model` so a resumed run
  (or a later evaluation) uses the very same pieces.
  """
  user_path = data_config.tokenizer
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
  resumed = epath.Path(workdir) / MODEL_FILENAME if workdir else None
  if resumed is not None and resumed.exists():
    return Tokenizer(os.fspath(resumed))

  texts = _capped_texts(train_texts, data_config.tokenizer_max_chars)
  if not any(text.strip() for text in texts):
    raise ValueError('The training split has no text to train a tokenizer on; check '
                     'config.data.source and its files.')
  key = hashlib.sha256()
  key.update(json.dumps([data_config.vocab_size, TRAINER_SETTINGS, _TRAINER_SEED,
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
    model = train_model(texts, data_config.vocab_size, log_path=cached[:-len('.model')] + '.log')
    _write_atomically(epath.Path(cached), model)
  if resumed is None:
    return Tokenizer(cached, model)
  resumed.parent.mkdir(parents=True, exist_ok=True)
  _write_atomically(resumed, model)
  return Tokenizer(os.fspath(resumed), model)


def _write_atomically(path: epath.Path, data: bytes) -> None:
  """Writes `data` to a uniquely named sibling (unique across hosts sharing the folder), then
  renames it into place, so a concurrent reader or trainer never sees half a file."""
  temporary = path.parent / f'{path.name}.{uuid.uuid4().hex}.tmp'
  temporary.write_bytes(data)
  temporary.replace(path)

