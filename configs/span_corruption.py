"""T5 span corruption on the decoder-only model, with UL2's denoisers as presets.

  --config configs/span_corruption.py:DENOISER[:SIZE]   e.g. ul2_x:small

DENOISER: t5 (default; T5 and UL2's first R-denoiser: mean span 3, 15% noise), ul2_r (mean
span 8, 15%), ul2_s (UL2's S-denoiser: a prefix LM whose split is uniform, i.e. objective
`prefix_lm`; its split is drawn per document of the window, where UL2 draws one per packed
example, since attention never crosses documents here), ul2_x (mean span 8, 50%; UL2's other
X settings are 3/50%, 64/15% and 64/50%, set them with --config.span_corruption.*). SIZE:
tiny (CPU, default), small, base. A run trains one denoiser; UL2's mixture of all seven with
mode tokens is not built. Architecture as configs/clm.py (pre-LN decoder), as in UL2's
decoder-only setting.
"""

from configs import base

DENOISERS = {
    't5': dict(mean_span_length=3.0, noise_density=0.15, sequential=False),
    'ul2_r': dict(mean_span_length=8.0, noise_density=0.15, sequential=False),
    'ul2_s': None,  # prefix_lm: no span corruption settings
    'ul2_x': dict(mean_span_length=8.0, noise_density=0.5, sequential=False),
}


def get_config(spec: str = 't5'):
  denoiser, _, size = (spec or 't5').partition(':')
  if denoiser in base.RUN_PRESETS and not size:  # 'tiny' alone means t5 at that size
    denoiser, size = 't5', denoiser
  size = size or 'tiny'
  if denoiser not in DENOISERS:
    raise ValueError(f'Unknown denoiser {denoiser!r} in configs/span_corruption.py:DENOISER'
                     f'[:SIZE]: choose from {sorted(DENOISERS)}.')
  settings = DENOISERS[denoiser]
  config = base.get_config('span_corruption' if settings else 'prefix_lm', size)
  if settings:
    config.span_corruption.update(**settings)
  if size == 'tiny':
    config.model.max_len = config.seq_len
  return config
