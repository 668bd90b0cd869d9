"""Objective x model size x learning rate on the tiny CPU preset."""

from __future__ import annotations

from typing import Any

from configs.sweeps import product, zip_

OBJECTIVES = ['configs/clm.py:tiny', 'configs/mlm.py:tiny', 'configs/plm.py:tiny']
SIZES = zip_(**{'model.num_layers': [2, 4], 'model.embed_dim': [128, 256]})
LEARNING_RATES = [1e-3, 3e-3]


def get_sweep() -> list[dict[str, Any]]:
  return product(product(config=OBJECTIVES), SIZES,
                 **{'optimizer.learning_rate': LEARNING_RATES})
