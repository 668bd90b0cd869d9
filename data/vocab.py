"""The token ids every objective needs, detached from the tokenizer that made them."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Vocab:
  """Vocabulary facts the objectives use inside jit: special ids and per-id flags.

  `is_special[i]` marks ids that are never masked, predicted as random
  replacements or counted as ordinary text (pad, unk, bos, eos, cls, sep, mask).
  `word_start[i]` marks pieces that begin a word (SentencePiece's '▁' prefix),
  which whole-word masking needs. `is_whitespace[i]` marks pieces that are only whitespace
  ('▁', a line break, a whitespace byte), which BERT never masks; it defaults to none, for
  vocabularies built without it (see `whitespace_flags`). An id of -1 means the token does not
  exist.
  """

  size: int
  pad_id: int
  unk_id: int
  bos_id: int
  eos_id: int
  cls_id: int
  sep_id: int
  mask_id: int
  is_special: np.ndarray
  word_start: np.ndarray
  is_whitespace: np.ndarray | None = None

  def __post_init__(self):
    if self.is_whitespace is None:
      object.__setattr__(self, 'is_whitespace', np.zeros(self.size, np.bool_))
    for name in ('is_special', 'word_start', 'is_whitespace'):
      array = getattr(self, name)
      if array.shape != (self.size,) or array.dtype != np.bool_:
        raise ValueError(f'Vocab.{name} must be a bool array of shape ({self.size},), got '
                         f'{array.dtype}{array.shape}.')

  # Hash and equality by value of the scalar fields so a Vocab can sit in a frozen
  # dataclass that jit treats as static.
  def _key(self):
    return (self.size, self.pad_id, self.unk_id, self.bos_id, self.eos_id, self.cls_id,
            self.sep_id, self.mask_id, self.is_special.tobytes(), self.word_start.tobytes(),
            self.is_whitespace.tobytes())

  def __hash__(self):
    return hash(self._key())

  def __eq__(self, other):
    return isinstance(other, Vocab) and self._key() == other._key()

  @property
  def ordinary_ids(self) -> np.ndarray:
    """Ids of ordinary (non-special) pieces, e.g. for MLM's random replacements."""
    return np.flatnonzero(~self.is_special).astype(np.int32)


def whitespace_flags(pieces: Sequence[str]) -> np.ndarray:
  """`is_whitespace` for SentencePiece pieces: True where the text is only whitespace ('▁'
  is a space; a byte piece such as '<0x0A>' counts when its byte is ASCII whitespace, never
  a byte of a multi-byte character)."""

  def blank(piece: str) -> bool:
    if len(piece) == 6 and piece.startswith('<0x') and piece.endswith('>'):
      try:
        byte = int(piece[3:5], 16)
      except ValueError:
        return False
      return byte < 0x80 and chr(byte).isspace()
    text = piece.replace('▁', ' ')
    return bool(text) and text.isspace()

  return np.array([blank(piece) for piece in pieces], np.bool_)


def toy_vocab(size: int = 64) -> Vocab:
  """A small vocabulary for tests: ids 0..6 are pad, unk, bos, eos, cls, sep, mask."""
  is_special = np.zeros(size, np.bool_)
  is_special[:7] = True
  word_start = np.zeros(size, np.bool_)
  word_start[7::2] = True
  return Vocab(size=size, pad_id=0, unk_id=1, bos_id=2, eos_id=3, cls_id=4, sep_id=5,
               mask_id=6, is_special=is_special, word_start=word_start)
