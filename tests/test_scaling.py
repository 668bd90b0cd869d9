"""Scaling fits recover known curves; the compute multiplier has a known answer; no fit is read
past twice its largest FLOPs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from comparison import scaling


def test_power_law_recovers_known_parameters_from_noisy_points():
  e, a, alpha = 1.7, 400.0, 0.3
  c = np.logspace(8, 12, 25)
  noise = np.exp(np.random.default_rng(0).normal(0.0, 0.005, c.shape))
  loss = (e + a * c ** -alpha) * noise
  fit = scaling.fit_power_law(c, loss)
  assert fit.E == pytest.approx(e, abs=0.1)
  assert fit.alpha == pytest.approx(alpha, abs=0.03)
  assert fit.A == pytest.approx(a, rel=0.5)
  assert float(np.max(np.abs(np.log(fit(c)) - np.log(loss)))) < 0.02
  low, high = scaling.exponent_interval(fit, c, loss, samples=60)
  assert low < fit.alpha < high and 0.0 < high - low < 0.1
  exact = scaling.fit_power_law(c, e + a * c ** -alpha)  # no noise: parameters exactly
  assert (exact.E, exact.alpha) == pytest.approx((e, alpha), rel=1e-3)


def test_power_law_refuses_to_extrapolate_past_twice_the_largest_flops():
  c = np.array([1e9, 2e9, 4e9, 8e9])
  fit = scaling.fit_power_law(c, 2.0 + 50.0 * c ** -0.2)
  value, reason = fit.predict(1.6e10)
  assert value == pytest.approx(2.0 + 50.0 * 1.6e10 ** -0.2, rel=1e-3) and reason == ''
  value, reason = fit.predict(1.61e10)
  assert value is None and 'past 2x the largest fitted (8e+09)' in reason
  with pytest.raises(ValueError, match='3 or more distinct FLOPs'):
    scaling.fit_power_law([1e9, 1e9, 2e9], [3.0, 3.0, 2.9])


def _curve(a, b, flops, noise=0.0, samples=100, seed=0):
  flops = np.asarray(flops, dtype=np.float64)
  means = a + b * np.log10(flops)
  rng = np.random.default_rng(seed)
  reps = means[:, None] + rng.normal(0.0, noise, (len(flops), samples))
  return scaling.Curve(flops, means, reps)


def test_multiplier_on_curves_with_a_known_answer():
  """A = 0.5 + 0.1 log10 C; B's final score is 0.03 below A's curve at B's final 4e9 FLOPs,
  so A gets there at 4e9 * 10^(-0.3): 50.1% of B's FLOPs."""
  flops = [1e9, 2e9, 4e9]
  curves = {'a': _curve(0.5, 0.1, flops, noise=0.002),
            'b': _curve(0.5 - 0.03, 0.1, flops, noise=0.002, seed=1)}
  result = scaling.multiplier('a', 'b', curves)
  assert result.ratio == pytest.approx(10 ** -0.3, rel=1e-9)
  assert result.low < 10 ** -0.3 < result.high and result.reason == ''
  back = scaling.multiplier('b', 'a', curves)  # B needs 10^0.3 = 2.0x A's FLOPs: allowed
  assert back.ratio == pytest.approx(10 ** 0.3, rel=1e-9)
  low, high = scaling.slope_interval(curves['a'])
  assert low < 0.1 < high


def test_multiplier_is_refused_past_twice_the_largest_checkpoint():
  flops = [1e9, 2e9, 4e9]
  curves = {'a': _curve(0.5, 0.1, flops), 'b': _curve(0.5 + 0.031, 0.1, flops),
            'flat': _curve(0.9, -0.01, flops)}
  result = scaling.multiplier('a', 'b', curves)  # needs 4e9 * 10^0.31 = 8.2e9 > 8e9
  assert result.ratio is None and math.isnan(result.low)
  assert 'past 2x its largest checkpoint (4e+09); not extrapolated' in result.reason
  assert scaling.multiplier('flat', 'a', curves).reason == 'its score does not rise with FLOPs'
  # Nor below half the first checkpoint: 'high' is 0.2 above b at 1e9, so its fit would reach
  # b's final score at 4e9 * 10^-2 = 4e7 FLOPs, far below its first point.
  curves['high'] = _curve(0.7, 0.1, flops)
  low = scaling.multiplier('high', 'b', curves)
  assert low.ratio is None and 'below 1/2 of its first checkpoint (1e+09); not extrapolated' in (
      low.reason)
  # A constant score is not rising, whatever its rounding.
  curves['constant'] = scaling.Curve(np.asarray(flops), np.full(3, 0.712),
                                     np.full((3, 20), 0.712) + 1e-17)
  assert scaling.multiplier('constant', 'a', curves).reason == (
      'its score does not rise with FLOPs')


def test_report_fits_each_arms_validation_curve_from_a_quarter_of_the_run():
  """Points before a quarter of the run (warm-up) are left out; the table shows the fit."""
  from comparison import headline  # pylint: disable=import-outside-toplevel

  steps = np.arange(10, 410, 10)
  train = [{'step': int(s), 'flops': 1e9 * s} for s in steps]
  evals = [{'step': int(s), 'clm_loss': float(2.0 + 300.0 * (1e9 * s) ** -0.25)} for s in steps]
  evals[0]['clm_loss'] = 50.0  # before a quarter of the run: not fitted
  run = {'arm': 'clm', 'config': {'objective': 'clm'}, 'train': train, 'evals': evals}
  ((metric, flops, losses),) = headline.loss_points([run]).values()
  assert metric == 'clm_loss' and len(flops) == 31 and min(flops) == 1e11
  fit = scaling.fit_power_law(flops, losses)
  assert (fit.E, fit.alpha) == pytest.approx((2.0, 0.25), rel=1e-3)
  (row,) = [line for line in headline.loss_scaling([run]) if line.startswith('| clm |')]
  assert row.startswith(f'| clm | clm_loss | {fit.E:.4g} | {fit.A:.4g} | {fit.alpha:.4f} [')
