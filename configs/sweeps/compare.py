"""The objectives comparison: every arm of configs/compare.py (the six default arms, then every
objective registered later) x 3 seeds.

  python tools/launch.py --sweep configs/sweeps/compare.py[:PRESET] --workdir_root runs/compare

PRESET is the arms' preset (tiny, small, base; default tiny). Runs are named ARM_seed=S.
"""

from __future__ import annotations

from typing import Any

from configs import compare
from configs.sweeps import product

SEEDS = [0, 1, 2]


def get_sweep(preset: str = 'tiny') -> list[dict[str, Any]]:
  if preset not in compare.RUNS:
    raise ValueError(f'--sweep configs/sweeps/compare.py:{preset}: choose a preset from '
                     f'{sorted(compare.RUNS)}.')
  return product(config=[f'configs/compare.py:{arm}:{preset}' for arm in compare.arm_names()],
                 seed=SEEDS)
