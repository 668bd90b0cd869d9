"""Peer for the CLM row: a GPT-2 in plain PyTorch, trained the way nanoGPT trains it.

  python benchmarks/peers/gpt2_nanogpt.py                      # GPT-2 124M, batch 32 x 1024
  python benchmarks/peers/gpt2_nanogpt.py --device cpu --layers 2 --width 64 --heads 2 \\
      --vocab 512 --batch 2 --seq 64 --steps 2 --warmup 1     # a tiny check on CPU

Pre-LN blocks with biases, learned positions, tied input/output embeddings, GELU MLP of 4x
width, causal attention through F.scaled_dot_product_attention(is_causal=True) (flash on
GPUs), logits over the whole vocabulary at every position, torch.compile, bf16 autocast and
fused AdamW. Prints one JSON line (peer_common.run).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

import peer_common


class SelfAttention(nn.Module):
  """Causal multi-head self-attention with one fused QKV projection."""

  def __init__(self, width: int, heads: int):
    super().__init__()
    self.heads = heads
    self.qkv = nn.Linear(width, 3 * width)
    self.out = nn.Linear(width, width)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    b, t, c = x.shape
    q, k, v = self.qkv(x).split(c, dim=2)
    q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return self.out(y.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
  """x + attn(ln(x)), then x + mlp(ln(x))."""

  def __init__(self, width: int, heads: int):
    super().__init__()
    self.ln_attn = nn.LayerNorm(width)
    self.attn = SelfAttention(width, heads)
    self.ln_mlp = nn.LayerNorm(width)
    self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(approximate='tanh'),
                             nn.Linear(4 * width, width))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = x + self.attn(self.ln_attn(x))
    return x + self.mlp(self.ln_mlp(x))


class GPT(nn.Module):
  """Token + position embeddings, pre-LN blocks, final norm, tied LM head."""

  def __init__(self, vocab: int, seq: int, layers: int, width: int, heads: int):
    super().__init__()
    self.tokens = nn.Embedding(vocab, width)
    self.positions = nn.Embedding(seq, width)
    self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
    self.ln_final = nn.LayerNorm(width)
    self.head = nn.Linear(width, vocab, bias=False)
    self.head.weight = self.tokens.weight
    self.apply(self._init)
    # GPT-2's scaled init of the projections into the residual stream.
    for name, param in self.named_parameters():
      if name.endswith(('attn.out.weight', 'mlp.2.weight')):
        nn.init.normal_(param, std=0.02 / math.sqrt(2 * layers))

  @staticmethod
  def _init(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
      nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
      nn.init.zeros_(module.bias)

  def forward(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    positions = torch.arange(tokens.shape[1], device=tokens.device)
    x = self.tokens(tokens) + self.positions(positions)
    for block in self.blocks:
      x = block(x)
    logits = self.head(self.ln_final(x))
    return F.cross_entropy(logits.view(-1, logits.shape[-1]).float(), targets.reshape(-1))


def main() -> None:
  p = peer_common.parser(__doc__.splitlines()[0], batch=32, seq=1024)
  p.add_argument('--layers', type=int, default=12)
  p.add_argument('--width', type=int, default=768)
  p.add_argument('--heads', type=int, default=12)
  p.add_argument('--vocab', type=int, default=50304, help='GPT-2\'s 50257 padded to 64.')
  args = p.parse_args()

  def build(device):
    model = GPT(args.vocab, args.seq, args.layers, args.width, args.heads).to(device)
    generator = torch.Generator().manual_seed(args.seed)
    batches = []
    for _ in range(2):
      window = peer_common.random_tokens(generator, (args.batch, args.seq + 1), 0, args.vocab)
      batches.append((window[:, :-1].to(device), window[:, 1:].to(device)))
    info = {'vocab': args.vocab, 'layers': args.layers, 'width': args.width,
            'objective': 'clm', 'logits': 'all positions'}
    return model, lambda forward, batch: forward(*batch), batches, info

  peer_common.run(args, 'gpt2 (nanoGPT-style)', build)


if __name__ == '__main__':
  main()
