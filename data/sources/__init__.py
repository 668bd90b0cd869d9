"""Document sources, one file each, found by name in `registry` (see data/sources/registry.py).

The first lookup imports every source module of the folder; none imports tensorflow_datasets
or JAX until it loads documents.
"""

from data.sources.registry import defaults, get, names, register  # noqa: F401


def load_documents(data_config, split: str):
  """The documents of `split` ('train', 'validation' or 'test') from `config.data.source`."""
  from data.sources.registry import SPLITS  # pylint: disable=import-outside-toplevel

  if split not in SPLITS:
    raise ValueError(f"split must be one of {', '.join(repr(s) for s in SPLITS)}, got {split!r}.")
  return get(data_config.source).load(data_config, split)
