"""Scaling fits per arm: held-out loss against pretraining FLOPs as a power law with an
irreducible term, downstream score against FLOPs as a log-linear fit, and the compute
multiplier between arms at equal downstream score (ELECTRA's Figure 1 reading: "A reaches B's
final score with x% of B's FLOPs").

Loss: L(C) = E + A * C^(-alpha), fitted in log space (least squares on log L): a grid over E
in [0, min L) with a linear fit of log(L - E) on log C at each E, refined by
scipy.optimize.curve_fit from the best grid point. Its exponent's interval is a residual
bootstrap in log space (refit on fitted + resampled residuals).

Downstream: s(C) = a + b * log10(C), least squares (no saturation term: over the 4x range of
kept checkpoints a saturating fit has more parameters than the data can fix). Its slope's and
the multiplier's intervals come from the nested bootstrap replicates of each checkpoint's mean
(comparison/stats.py), refitted per replicate.

Neither fit is read past twice the largest FLOPs it was fitted on: `predict` and
`multiplier` return None with the reason instead.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Mapping, Sequence

import numpy as np

MAX_EXTRAPOLATION = 2.0  # a fit is read up to this multiple of its largest FLOPs
SAMPLES = 200
SEED = 0
GRID = 400
_NEVER = 1e300  # a replicate that never reaches the target, kept finite for percentiles


@dataclasses.dataclass(frozen=True)
class PowerLaw:
  """L(C) = E + A * C^(-alpha), fitted on FLOPs up to c_max."""
  E: float  # pylint: disable=invalid-name
  A: float  # pylint: disable=invalid-name
  alpha: float
  c_max: float
  points: int

  def __call__(self, c: np.ndarray | float) -> np.ndarray | float:
    return self.E + self.A * np.power(c, -self.alpha)

  def predict(self, c: float) -> tuple[float | None, str]:
    return _checked(self, c, self.c_max)


@dataclasses.dataclass(frozen=True)
class LogLinear:
  """s(C) = a + b * log10(C), fitted on FLOPs up to c_max."""
  a: float
  b: float
  c_max: float
  points: int

  def __call__(self, c: np.ndarray | float) -> np.ndarray | float:
    return self.a + self.b * np.log10(c)

  def inverse(self, score: float) -> float:
    """The FLOPs at which the fit reaches `score` (inf where it never rises)."""
    decades = (score - self.a) / self.b if self.b > 0 else math.inf
    return float(10 ** decades) if decades < 300 else math.inf

  def predict(self, c: float) -> tuple[float | None, str]:
    return _checked(self, c, self.c_max)


def _checked(fit, c: float, c_max: float) -> tuple[float | None, str]:
  if c > MAX_EXTRAPOLATION * c_max:
    return None, (f'{c:.3g} FLOPs is past {MAX_EXTRAPOLATION:g}x the largest fitted '
                  f'({c_max:.3g}); not extrapolated')
  return float(fit(c)), ''


def _check_points(flops: Sequence[float], values: Sequence[float], least: int) -> tuple[
    np.ndarray, np.ndarray]:
  c = np.asarray(flops, dtype=np.float64)
  y = np.asarray(values, dtype=np.float64)
  if c.shape != y.shape:
    raise ValueError(f'{len(c)} FLOPs values for {len(y)} scores')
  keep = np.isfinite(c) & np.isfinite(y) & (c > 0)
  c, y = c[keep], y[keep]
  if len(np.unique(c)) < least:
    raise ValueError(f'a fit needs points at {least} or more distinct FLOPs > 0, got '
                     f'{len(np.unique(c))}')
  return c, y


def _grid_fit(x: np.ndarray, log_l: np.ndarray, loss: np.ndarray) -> tuple[float, float, float]:
  """(E, log A, alpha) on x = log C: for each E on a grid, log(L - E) linear in x."""
  grid = np.min(loss) * np.linspace(0.0, 1.0, GRID, endpoint=False)
  y = np.log(loss[None, :] - grid[:, None])  # (G, N)
  xm = x.mean()
  slope = ((x - xm) * (y - y.mean(axis=1, keepdims=True))).sum(axis=1) / ((x - xm) ** 2).sum()
  intercept = y.mean(axis=1) - slope * xm
  fitted = np.log(grid[:, None] + np.exp(intercept[:, None] + slope[:, None] * x[None, :]))
  best = int(np.argmin(((fitted - log_l[None, :]) ** 2).sum(axis=1)))
  return float(grid[best]), float(intercept[best]), float(-slope[best])


def _refine(x: np.ndarray, log_l: np.ndarray, start: tuple[float, float, float],
            ceiling: float) -> tuple[float, float, float]:
  from scipy import optimize  # pylint: disable=import-outside-toplevel

  def model(x, e, log_a, alpha):
    return np.log(e + np.exp(log_a - alpha * x))

  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')
      params, _ = optimize.curve_fit(
          model, x, log_l, p0=[min(max(start[0], 0.0), ceiling * 0.999), start[1], start[2]],
          bounds=([0.0, -np.inf, 0.0], [ceiling, np.inf, np.inf]), maxfev=5000)
  except (RuntimeError, ValueError):
    return start
  def sse(p):
    return float(((model(x, *p) - log_l) ** 2).sum())

  return tuple(float(p) for p in params) if sse(params) <= sse(start) else start


def fit_power_law(flops: Sequence[float], loss: Sequence[float]) -> PowerLaw:
  """L = E + A C^-alpha by least squares on log L (module docstring). FLOPs are scaled by
  their largest value inside the fit, so A is returned in the units of `flops`."""
  c, loss_values = _check_points(flops, loss, 3)
  if np.any(loss_values <= 0):
    raise ValueError('a power-law fit needs losses > 0')
  scale = float(c.max())
  x, log_l = np.log(c / scale), np.log(loss_values)
  e, log_a, alpha = _refine(x, log_l, _grid_fit(x, log_l, loss_values), float(loss_values.min()))
  return PowerLaw(E=e, A=float(math.exp(log_a) * scale ** alpha), alpha=alpha, c_max=scale,
                  points=len(c))


def exponent_interval(fit: PowerLaw, flops: Sequence[float], loss: Sequence[float],
                      samples: int = SAMPLES, seed: int = SEED) -> tuple[float, float]:
  """95% interval of alpha: residual bootstrap in log space."""
  c, loss_values = _check_points(flops, loss, 3)
  log_fit = np.log(fit(c))
  residuals = np.log(loss_values) - log_fit
  rng = np.random.default_rng(seed)
  alphas = []
  for _ in range(samples):
    resampled = np.exp(log_fit + rng.choice(residuals, size=len(residuals), replace=True))
    alphas.append(fit_power_law(c, resampled).alpha)
  low, high = np.percentile(alphas, [2.5, 97.5])
  return float(low), float(high)


def fit_log_linear(flops: Sequence[float], scores: Sequence[float]) -> LogLinear:
  c, y = _check_points(flops, scores, 2)
  b, a = np.polyfit(np.log10(c), y, 1)
  return LogLinear(a=float(a), b=float(b), c_max=float(c.max()), points=len(c))


@dataclasses.dataclass(frozen=True)
class Curve:
  """An arm's downstream score at its checkpoints: FLOPs, point means and their bootstrap
  replicates (checkpoints, samples), in increasing FLOPs."""
  flops: np.ndarray
  means: np.ndarray
  replicates: np.ndarray


@dataclasses.dataclass(frozen=True)
class Multiplier:
  """`a` reaches `b`'s final score with `ratio` times `b`'s final FLOPs (None: refused)."""
  a: str
  b: str
  ratio: float | None
  low: float
  high: float
  reason: str


def _lines(flops: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Least-squares a, b of s = a + b log10(C) for every column of `scores` (points, R)."""
  x = np.log10(flops)
  xc = x - x.mean()
  b = (xc @ (scores - scores.mean(axis=0))) / (xc @ xc)
  return scores.mean(axis=0) - b * x.mean(), b


FLAT_SLOPE = 1e-9  # score per decade of FLOPs below which a fit counts as not rising


def _ratios(a: np.ndarray, b: np.ndarray, target: np.ndarray, c_min: float, c_max: float,
            c_b: float) -> tuple[np.ndarray, np.ndarray]:
  """(FLOPs needed / c_b, reason code): 0 fine, 1 not rising, 2 past the extrapolation limit
  above the fitted range, 3 below it (reached before a fraction 1/limit of the first point)."""
  rising = b > FLAT_SLOPE
  with np.errstate(divide='ignore', invalid='ignore', over='ignore'):
    decades = np.where(rising, (target - a) / np.where(rising, b, 1.0), np.inf)
    needed = np.power(10.0, np.clip(decades, -300.0, 300.0))
  code = np.where(~rising, 1, np.where(needed > MAX_EXTRAPOLATION * c_max, 2,
                                       np.where(needed < c_min / MAX_EXTRAPOLATION, 3, 0)))
  return needed / c_b, code


def multiplier(a: str, b: str, curves: Mapping[str, Curve]) -> Multiplier:
  """The FLOPs arm `a` needs (its log-linear fit) to reach arm `b`'s final mean score, over
  `b`'s final FLOPs; a replicate that is refused counts as never reaching it (+inf)."""
  curve_a, curve_b = curves[a], curves[b]
  fit = fit_log_linear(curve_a.flops, curve_a.means)
  c_b, c_min = float(curve_b.flops[-1]), float(curve_a.flops[0])
  ratio, code = _ratios(np.asarray([fit.a]), np.asarray([fit.b]),
                        np.asarray([curve_b.means[-1]]), c_min, fit.c_max, c_b)
  if code[0] == 1:
    return Multiplier(a, b, None, math.nan, math.nan, 'its score does not rise with FLOPs')
  if code[0] == 2:
    return Multiplier(a, b, None, math.nan, math.nan, (
        f'it would need {ratio[0] * c_b:.3g} FLOPs, past {MAX_EXTRAPOLATION:g}x its largest '
        f'checkpoint ({fit.c_max:.3g}); not extrapolated'))
  if code[0] == 3:
    return Multiplier(a, b, None, math.nan, math.nan, (
        f'its fit reaches that score at {ratio[0] * c_b:.3g} FLOPs, below 1/'
        f'{MAX_EXTRAPOLATION:g} of its first checkpoint ({c_min:.3g}); not extrapolated'))
  reps_a, reps_b = _lines(curve_a.flops, curve_a.replicates)
  ratios, codes = _ratios(reps_a, reps_b, curve_b.replicates[-1], c_min, fit.c_max, c_b)
  # A replicate that never gets there counts as +inf; one that got there before the fitted
  # range as the least the range can tell (half the first checkpoint).
  ratios = np.where(codes == 0, ratios,
                    np.where(codes == 3, c_min / MAX_EXTRAPOLATION / c_b, _NEVER))
  low, high = (math.inf if v >= _NEVER else float(v)
               for v in np.percentile(ratios, [2.5, 97.5], method='inverted_cdf'))
  return Multiplier(a, b, float(ratio[0]), low, high, '')


def slope_interval(curve: Curve) -> tuple[float, float]:
  """95% interval of the log-linear slope (score per decade of FLOPs) over replicates."""
  _, slopes = _lines(curve.flops, curve.replicates)
  low, high = np.percentile(slopes, [2.5, 97.5])
  return float(low), float(high)
