"""What the PyTorch peer benchmarks share: flags, the timed training loop and the JSON line.

Each peer script builds a model and a `loss_fn(model, batch)` on random tokens and hands them
to `run`, which times whole training steps (forward, backward, gradient clipping at 1.0 and a
decoupled-weight-decay AdamW update) the way benchmarks/throughput.py times ours: a first step
that includes compilation, warmup steps, then timed steps between two device synchronisations.
Two pre-made batches on the device alternate, so no host data work is timed.

Not part of the package and not a dependency of the project: needs torch (and transformers
for the Hugging Face peers), which the project does not install.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time
import traceback
from typing import Any, Callable

import torch


def parser(description: str, *, batch: int, seq: int) -> argparse.ArgumentParser:
  """The flags every peer takes; the defaults are the GPU row's shape."""
  p = argparse.ArgumentParser(description=description)
  p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                 help='cuda or cpu (default: cuda when available).')
  p.add_argument('--dtype', default='bfloat16', choices=('bfloat16', 'float32'),
                 help='Autocast compute type; parameters and optimizer state stay float32.')
  p.add_argument('--batch', type=int, default=batch, help='Sequences per step.')
  p.add_argument('--seq', type=int, default=seq, help='Tokens per sequence.')
  p.add_argument('--steps', type=int, default=20, help='Timed steps.')
  p.add_argument('--warmup', type=int, default=5,
                 help='Untimed steps before them, the first of which compiles.')
  p.add_argument('--no-compile', dest='compile', action='store_false',
                 help='Run eagerly instead of through torch.compile.')
  p.add_argument('--no-compile-fallback', dest='compile_fallback', action='store_false',
                 help='Fail if torch.compile fails, instead of rerunning eagerly.')
  p.add_argument('--lr', type=float, default=1e-4)
  p.add_argument('--seed', type=int, default=0)
  return p


def versions() -> dict[str, str]:
  """torch, transformers (when importable), CUDA and Python versions."""
  out = {'torch': torch.__version__, 'cuda': torch.version.cuda or '',
         'python': platform.python_version()}
  try:
    import transformers  # pylint: disable=import-outside-toplevel
    out['transformers'] = transformers.__version__
  except ImportError:
    pass
  return out


def device_name(device: torch.device) -> str:
  """The GPU's name, or the host processor's for CPU runs."""
  if device.type == 'cuda':
    return torch.cuda.get_device_name(device)
  return platform.processor() or platform.machine() or 'cpu'


def autocast(device: torch.device, dtype: str):
  """bf16 autocast on `device`, or nothing for float32."""
  if dtype == 'float32':
    return contextlib.nullcontext()
  return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def adamw(model: torch.nn.Module, lr: float, weight_decay: float,
          device: torch.device) -> torch.optim.Optimizer:
  """AdamW with weight decay on matrices only (not on biases, norms' scales), fused on CUDA."""
  params = [p for p in model.parameters() if p.requires_grad]
  groups = [{'params': [p for p in params if p.dim() >= 2], 'weight_decay': weight_decay},
            {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0}]
  extra = {'fused': True} if device.type == 'cuda' else {}
  return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8, **extra)


def synchronize(device: torch.device) -> None:
  """Waits for the device's queued work (a no-op on CPU)."""
  if device.type == 'cuda':
    torch.cuda.synchronize(device)


def _measure(args: argparse.Namespace, build: Callable[[torch.device], tuple],
             device: torch.device, compile_model: bool) -> dict[str, Any]:
  """Builds the model, batches and loss on `device` and times `args.steps` training steps."""
  torch.manual_seed(args.seed)
  model, loss_fn, batches, info = build(device)
  model.train()
  optimizer = adamw(model, args.lr, 0.01, device)
  forward = torch.compile(model) if compile_model else model
  params = [p for p in model.parameters() if p.requires_grad]

  def step(batch):
    with autocast(device, args.dtype):
      loss = loss_fn(forward, batch)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss

  if device.type == 'cuda':
    torch.cuda.reset_peak_memory_stats(device)
  synchronize(device)
  start = time.perf_counter()
  loss = step(batches[0])
  synchronize(device)
  first_step_s = time.perf_counter() - start
  for i in range(1, max(args.warmup, 1)):
    loss = step(batches[i % 2])
  synchronize(device)
  start = time.perf_counter()
  for i in range(args.steps):
    loss = step(batches[i % 2])
  synchronize(device)
  step_time = (time.perf_counter() - start) / max(args.steps, 1)
  result = {
      'tokens_per_sec': args.batch * args.seq / step_time,
      'step_time_ms': 1000 * step_time,
      'compile_s': first_step_s,  # the first step, compilation included
      'loss': float(loss.detach().float()),
      'params_m': sum(p.numel() for p in params) / 1e6,
      'peak_memory_bytes': None, 'peak_memory_gib': None,
  }
  if device.type == 'cuda':
    peak = torch.cuda.max_memory_allocated(device)
    result.update(peak_memory_bytes=peak, peak_memory_gib=peak / 2**30,
                  peak_reserved_gib=torch.cuda.max_memory_reserved(device) / 2**30)
  result.update(info)
  return result


def run(args: argparse.Namespace, model_name: str,
        build: Callable[[torch.device], tuple]) -> dict[str, Any]:
  """Times the peer and prints one JSON line; returns it.

  `build(device)` returns (model, loss_fn(forward, batch) -> scalar loss, [batch, batch], info
  dict for the JSON line). If torch.compile fails (no compiler on the machine, a graph it
  cannot trace), the run is repeated eagerly and the line says so, unless
  --no-compile-fallback.
  """
  device = torch.device(args.device)
  if device.type == 'cuda':
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
  compiled, compile_error = args.compile, None
  try:
    result = _measure(args, build, device, args.compile)
  except Exception as error:  # pylint: disable=broad-exception-caught
    if not (args.compile and args.compile_fallback):
      raise
    traceback.print_exc()
    compile_error = f'{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ""}'
    print(f'torch.compile failed ({compile_error[:300]}); rerunning eagerly.', file=sys.stderr)
    torch._dynamo.reset()  # pylint: disable=protected-access
    if device.type == 'cuda':
      torch.cuda.empty_cache()
    compiled = False
    result = _measure(args, build, device, False)
  record = {'impl': 'peer', 'framework': 'torch', 'model': model_name,
            'batch': args.batch, 'seq': args.seq, 'dtype': args.dtype, 'steps': args.steps,
            'warmup': args.warmup, 'compiled': compiled, **result,
            'device': device_name(device), 'platform': device.type, 'versions': versions()}
  if compile_error:
    record['compile_error'] = compile_error[:500]
  print(json.dumps(record), flush=True)
  return record


def random_tokens(generator: torch.Generator, shape: tuple[int, ...], low: int,
                  high: int) -> torch.Tensor:
  """Uniform token ids in [low, high) (int64, on the host)."""
  return torch.randint(low, high, shape, generator=generator, dtype=torch.long)


def choose_positions(generator: torch.Generator, batch: int, seq: int, count: int,
                     low: int = 0, high: int | None = None) -> torch.Tensor:
  """[batch, count] distinct positions per row in [low, high), sorted."""
  high = seq if high is None else high
  scores = torch.rand((batch, high - low), generator=generator)
  return scores.topk(count, dim=1).indices.sort(dim=1).values + low
