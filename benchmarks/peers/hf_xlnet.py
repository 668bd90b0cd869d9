"""Peer for the PLM row: Hugging Face XLNet trained on permutation LM with partial prediction.

  python benchmarks/peers/hf_xlnet.py                            # XLNet-base size, 16 x 512
  python benchmarks/peers/hf_xlnet.py --device cpu --layers 2 --width 64 --heads 2 \\
      --vocab 512 --batch 2 --seq 64 --steps 2 --warmup 1      # a tiny check on CPU

XLNetLMHeadModel at base size by default (12 x 768, 12 heads, inner 3072, vocab 32000, dropout
0.1, no memory), built from an XLNetConfig (no weights are downloaded), torch.compile, bf16
autocast and fused AdamW. Each row predicts round(seq / k) targets (85 at 512 with k = 6)
chosen at random; a random factorisation order puts every non-target before every target, so
non-targets see one another and a target sees the non-targets and the targets before it in
the order (perm_mask), and target_mapping selects the targets for the query stream.
"""

from __future__ import annotations

import torch

import peer_common


def permutation_inputs(generator: torch.Generator, batch: int, seq: int,
                       num_predict: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
  """(perm_mask [B, T, T] float, target_mapping [B, P, T] float, target positions [B, P])."""
  positions = peer_common.choose_positions(generator, batch, seq, num_predict)
  is_target = torch.zeros((batch, seq), dtype=torch.bool)
  is_target.scatter_(1, positions, True)
  # Rank in the factorisation order: non-targets 0, targets 1..P in a random order.
  order = torch.rand((batch, num_predict), generator=generator).argsort(dim=1) + 1
  rank = torch.zeros((batch, seq), dtype=torch.long)
  rank.scatter_(1, positions, order)
  # perm_mask[b, i, j] = 1: i may not see j, i.e. j is a target not before i in the order
  # (a target never sees itself; the content stream adds the diagonal back).
  perm_mask = is_target[:, None, :] & (rank[:, None, :] >= rank[:, :, None])
  target_mapping = torch.zeros((batch, num_predict, seq))
  target_mapping.scatter_(2, positions[..., None], 1.0)
  return perm_mask.float(), target_mapping, positions


def main() -> None:
  p = peer_common.parser(__doc__.splitlines()[0], batch=16, seq=512)
  p.add_argument('--layers', type=int, default=12)
  p.add_argument('--width', type=int, default=768)
  p.add_argument('--heads', type=int, default=12)
  p.add_argument('--vocab', type=int, default=32000)
  p.add_argument('--k', type=int, default=6, help='1/k of the tokens are targets.')
  p.add_argument('--num-predict', type=int, default=0, help='Targets per row (0: seq / k).')
  args = p.parse_args()

  import transformers  # pylint: disable=import-outside-toplevel

  def build(device):
    config = transformers.XLNetConfig(
        vocab_size=args.vocab, d_model=args.width, n_layer=args.layers, n_head=args.heads,
        d_inner=4 * args.width, ff_activation='gelu', dropout=0.1, mem_len=None,
        use_mems_train=False, bi_data=False)
    model = transformers.XLNetLMHeadModel(config).to(device)
    num_predict = args.num_predict or round(args.seq / args.k)
    generator = torch.Generator().manual_seed(args.seed)
    batches = []
    for _ in range(2):
      tokens = peer_common.random_tokens(generator, (args.batch, args.seq), 5, args.vocab)
      perm_mask, target_mapping, positions = permutation_inputs(generator, args.batch,
                                                                args.seq, num_predict)
      batch = {'input_ids': tokens, 'perm_mask': perm_mask, 'target_mapping': target_mapping,
               'labels': tokens.gather(1, positions)}
      batches.append({k: v.to(device) for k, v in batch.items()})
    info = {'vocab': args.vocab, 'layers': args.layers, 'width': args.width,
            'objective': 'plm', 'targets': num_predict, 'logits': 'target positions'}
    return model, lambda forward, batch: forward(**batch).loss, batches, info

  peer_common.run(args, 'hf XLNetLMHeadModel', build)


if __name__ == '__main__':
  main()
