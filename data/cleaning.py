"""Repairs of bad bytes and characters in documents, and the counts that report them.

Bad input never stops a corpus build: invalid UTF-8 becomes U+FFFD, control characters are
removed, empty documents and malformed JSON lines are skipped, and every repair and skip is
counted per split so the run can say what it did.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Sequence

# Control characters other than tab, line feed and carriage return carry no text (NUL, bells,
# terminal escapes, C1 codes from mis-decoded bytes); form feed and vertical tab break lines.
_CONTROL_CHARACTERS = re.compile('[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]')
_SURROGATES = re.compile('[\ud800-\udfff]')  # lone ones, from JSON escapes; not encodable
_UTF8_REPLACEMENT = '\ufffd'.encode('utf-8')


def decode_utf8(raw: bytes) -> tuple[str, int]:
  """`raw` as text with U+FFFD for each invalid UTF-8 sequence, and how many were replaced."""
  text = raw.decode('utf-8', errors='replace')
  return text, text.count('\ufffd') - raw.count(_UTF8_REPLACEMENT)


def clean_text(text: str) -> tuple[str, int, int]:
  """(text safe to store and tokenize, surrogates replaced, control characters removed).

  Lone surrogates become U+FFFD; form feed and vertical tab become line breaks; other control
  characters except tab, line feed and carriage return are removed.
  """
  text, surrogates = _SURROGATES.subn('\ufffd', text)
  text, controls = _CONTROL_CHARACTERS.subn(
      lambda match: '\n' if match.group() in '\x0b\x0c' else '', text)
  return text, surrogates, controls


def split_stats(items: Sequence[tuple[str, str, dict[str, int]]],
                skipped: collections.Counter | None = None) -> dict[str, int]:
  """Cleaning counts of one split: its documents, their repairs and what was skipped."""
  stats = collections.Counter(skipped or {})
  stats['documents'] = len(items)
  for _, _, repairs in items:
    for key, count in repairs.items():
      if count:
        stats[key] += count
        stats[f'{key}_documents'] += 1
  return dict(stats)


def plural(count: int, noun: str) -> str:
  return f'{count} {noun}' + ('' if count == 1 else 's')


def cleaning_notes(stats: dict[str, int]) -> list[str]:
  """What cleaning skipped or repaired in a split, as phrases for a log line or an error."""
  notes = []
  if stats.get('skipped_empty'):
    notes.append(f'{plural(stats["skipped_empty"], "empty document")} skipped')
  if stats.get('skipped_bad_json'):
    notes.append(f'{plural(stats["skipped_bad_json"], "malformed JSON line")} skipped')
  if stats.get('invalid_utf8'):
    notes.append(f'{plural(stats["invalid_utf8"], "invalid UTF-8 sequence")} replaced by '
                 f'U+FFFD in {plural(stats["invalid_utf8_documents"], "document")}')
  if stats.get('control_chars'):
    notes.append(f'{plural(stats["control_chars"], "control character")} removed from '
                 f'{plural(stats["control_chars_documents"], "document")}')
  return notes


def why_empty(stats: dict[str, int]) -> str:
  """What was skipped from files that left no document, for an error message."""
  return ', '.join(cleaning_notes(stats)) or 'only blank lines'


def describe_cleaning(stats: dict[str, int]) -> str:
  """'41 documents (3 empty documents skipped, ...)': a split's cleaning counts for the log."""
  notes = cleaning_notes(stats)
  text = plural(stats.get('documents', 0), 'document')
  return f'{text} ({", ".join(notes)})' if notes else text
