"""Source `tfds`: any registered TensorFlow Datasets text dataset, by name (`lm1b`, `c4/en`).

Built once into array_record under `config.data.data_dir` and read back without TensorFlow;
splits come from `train_split` / `validation_split` / `test_split` (slices such as
'train[:1%]' work) and the text from `text_field`.
"""

from __future__ import annotations

import contextlib
import socket
import importlib
import os
import re

import ml_collections

from data.sources.registry import register

_VERSION_PATTERN = re.compile(r'^\d+(\.\d+){2}$')


def _builder(data_config: ml_collections.ConfigDict, data_dir: str):
  """A registered tfds builder for `config.data.tfds_name`, checked before any download."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  name = data_config.tfds_name.strip()
  if not name:
    raise ValueError("config.data.tfds_name is empty; set it to a tfds dataset such as 'lm1b' "
                     "when config.data.source is 'tfds'.")
  base, _, rest = name.partition('/')
  base = base.split(':')[0]
  if '/' in name and ':' not in rest and _VERSION_PATTERN.match(rest):
    name = f'{base}:{rest}'  # 'lm1b/1.1.1' means a version, not a config called '1.1.1'.
  # tfds imports its legacy builder packages (c4, wikipedia, ...) lazily, and builder lookup
  # does not trigger that import, so load the packages that hold text datasets first.
  for package in ('text', 'summarization', 'question_answering', 'translate'):
    with contextlib.suppress(ImportError):
      importlib.import_module(f'tensorflow_datasets.{package}')
  from tensorflow_datasets.core import registered  # pylint: disable=import-outside-toplevel

  known = (base in tfds.list_builders(with_community_datasets=False)
           or base in registered.list_imported_builders())  # also ones a user's code defines
  if not known and not ('://' not in data_dir and os.path.isdir(os.path.join(data_dir, base))):
    raise ValueError(f'config.data.tfds_name={data_config.tfds_name!r} is not a registered tfds '
                     'dataset; see tfds.list_builders() for the names.')
  try:
    return tfds.builder(name, data_dir=data_dir)
  except (AssertionError, ValueError) as error:  # Unknown version or config of a known dataset.
    reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
    raise ValueError(f'config.data.tfds_name={data_config.tfds_name!r}: {reason}') from error


def _online(host: str = 'storage.googleapis.com', timeout: float = 3.0) -> bool:
  """Whether this machine reaches the internet (tfds' download host), within a few seconds."""
  try:
    with socket.create_connection((host, 443), timeout=timeout):
      return True
  except OSError:
    return False


@register('tfds', defaults={'tfds_name': '', 'text_field': 'text', 'data_dir': '',
                            'train_split': 'train', 'validation_split': 'validation',
                            'test_split': 'test'})
def load(data_config: ml_collections.ConfigDict, split: str):
  """A registered TFDS dataset by name, such as 'lm1b' or 'c4/en:3.1.0'."""
  from data.sources import store  # pylint: disable=import-outside-toplevel

  data_dir = store.data_dir_for(data_config)
  builder = _builder(data_config, data_dir)  # checks the name before taking the lock
  catalog = type(builder).__module__.startswith('tensorflow_datasets.')
  if catalog and not builder.is_prepared() and not _online():
    # tfds would retry its downloads for minutes before failing. (A builder of the user's own
    # may make its data locally, so only catalog datasets are refused here.)
    raise ValueError(
        f'config.data.tfds_name={data_config.tfds_name!r} is not prepared in {data_dir} and '
        'this machine cannot reach the internet to download it: prepare it where there is '
        f'network (`tfds build {data_config.tfds_name} --data_dir DIR`) and set '
        'config.data.data_dir to that directory.')
  setting = f'{split}_split'
  split_name = data_config.get(setting, split)
  if split == 'test' and setting not in data_config:
    split_name = 'test'
  return store.build_and_load(
      lambda: _builder(data_config, data_dir), data_dir, split_name, data_config.text_field,
      setting=f'config.data.{setting}', empty_fix='choose another split')
