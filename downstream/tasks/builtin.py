"""Offline tasks derived from the standard library's docstrings, so the defaults and the tests
need no download:

  - `stdlib_package`: which top-level stdlib package (email, json, asyncio, ...) a docstring
    comes from (single-text classification over the `num_classes` largest packages);
  - `stdlib_same_module`: whether two docstrings come from the same module (pair
    classification, balanced, scored by accuracy and F1);
  - `stdlib_qa`: extractive QA. The context lists a module's functions and classes as
    'name: summary' lines; the question is one summary; the answer is its name, a span of the
    context.

Splits are by a hash of the module path, so no module's text is in two splits, except in
`stdlib_package`: there the split is by a hash of each docstring's `module:name`, so one
module's docstrings may sit in train and test. Split by module, a few large modules (tkinter's
`__init__`) fill a split and validation and test hold only 5 of the 8 packages (Python 3.11).
"""

from __future__ import annotations

import collections
import functools
import os
import random
import re
import sysconfig

from configs.task_sections import SECTIONS
from data.cleaning import clean_text
from data.sources.builtin import file_docstrings, stdlib_files
from downstream.tasks import base
from downstream.tasks.registry import register

_SUMMARY_END = re.compile(r'(?<=[.!?])\s|\n\s*\n')


@functools.lru_cache(maxsize=4)
def docstrings(max_files: int, min_doc_chars: int) -> tuple[tuple[str, str, str], ...]:
  """(module path relative to the stdlib, qualified name, docstring) of the parsed files."""
  root = sysconfig.get_paths()['stdlib']
  found = []
  for path in stdlib_files(max_files):
    relative = os.path.relpath(path, root)
    for name, text in file_docstrings(path):
      text, _, _ = clean_text(text)
      if len(text) >= min_doc_chars:
        found.append((relative, name, text))
  return tuple(found)


def _package(relative: str) -> str | None:
  parts = relative.split(os.sep)
  return parts[0] if len(parts) > 1 else None


def _summary(text: str) -> str:
  """The first sentence (or paragraph) of a docstring, on one line."""
  first = _SUMMARY_END.split(text.strip(), maxsplit=1)[0]
  return ' '.join(first.split())


@register('stdlib_package', defaults=SECTIONS['stdlib_package'])
def make_package(settings) -> base.Task:
  if not isinstance(settings['num_classes'], int) or settings['num_classes'] < 2:
    raise ValueError(f'config.task.num_classes must be an integer >= 2 (packages to tell '
                     f'apart), got {settings["num_classes"]!r}.')
  found = docstrings(settings['max_files'], settings['min_doc_chars'])
  counts = collections.Counter(p for p in (_package(r) for r, _, _ in found) if p)
  labels = sorted(name for name, _ in counts.most_common(settings['num_classes']))
  if len(labels) < 2:
    raise ValueError('stdlib_package found fewer than 2 packages: raise config.task.max_files '
                     '(0 reads the whole standard library).')
  index = {name: i for i, name in enumerate(labels)}
  splits = collections.defaultdict(list)
  for relative, name, text in found:
    package = _package(relative)
    if package in index:
      splits[base.split_of(f'{relative}:{name}')].append(
          {'text': text[:settings['max_chars']], 'label': index[package]})
  return base.make_task('stdlib_package', 'classification', dict(splits), settings,
                        label_names=labels, metrics=('accuracy', 'macro_f1'),
                        template='{text}\nPackage:', label_words=[f' {l}' for l in labels])


@register('stdlib_same_module', defaults=SECTIONS['stdlib_same_module'])
def make_same_module(settings) -> base.Task:
  found = docstrings(settings['max_files'], settings['min_doc_chars'])
  by_module = collections.defaultdict(list)
  for relative, _, text in found:
    by_module[relative].append(text[:settings['max_chars']])
  splits = collections.defaultdict(list)
  for split in ('train', 'validation', 'test'):
    modules = sorted(m for m in by_module if base.split_of(m) == split)
    rng = random.Random(f'same_module:{split}')
    for module in modules:
      texts = by_module[module]
      others = [m for m in modules if m != module]
      if len(texts) < 2 or not others:
        continue
      for i, text in enumerate(texts):
        if i % 2 == 0:
          partner, label = texts[(i + 1 + rng.randrange(len(texts) - 1)) % len(texts)], 1
        else:
          partner, label = rng.choice(by_module[rng.choice(others)]), 0
        splits[split].append({'text': text, 'text_pair': partner, 'label': label})
  return base.make_task('stdlib_same_module', 'classification', dict(splits), settings,
                        label_names=('different', 'same'), metrics=('accuracy', 'f1'), pair=True,
                        template='{text}\n{text_pair}\nSame module:',
                        label_words=(' no', ' yes'))


@register('stdlib_qa', defaults=SECTIONS['stdlib_qa'])
def make_qa(settings) -> base.Task:
  found = docstrings(settings['max_files'], settings['min_doc_chars'])
  by_module = collections.defaultdict(dict)
  for relative, name, text in found:
    if name != '<module>':
      summary = _summary(text)[:settings['max_chars']]
      if summary and name not in summary:
        by_module[relative].setdefault(summary, name)
  splits = collections.defaultdict(list)
  size = settings['entries_per_context']
  for module in sorted(by_module):
    entries = [(name, summary) for summary, name in by_module[module].items()]
    for start in range(0, len(entries) - 1, size):
      group = entries[start:start + size]
      if len(group) < 2:
        continue
      lines, offsets = [], []
      position = 0
      for name, summary in group:
        offsets.append(position)
        line = f'{name}: {summary}'
        lines.append(line)
        position += len(line) + 1
      context = '\n'.join(lines)
      for k, (name, summary) in enumerate(group):
        splits[base.split_of(module)].append({
            'id': f'{module}:{start}:{k}', 'question': summary, 'context': context,
            'answers': [{'text': name, 'start': offsets[k]}]})
  return base.make_task('stdlib_qa', 'qa', dict(splits), settings)
