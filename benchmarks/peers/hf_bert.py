"""Peers for the MLM and MLM+NSP rows: Hugging Face BERT trained on random tokens.

  python benchmarks/peers/hf_bert.py --objective mlm            # BertForMaskedLM, 256 x 128
  python benchmarks/peers/hf_bert.py --objective mlm_nsp --batch 32 --seq 512  # BertForPreTraining
  python benchmarks/peers/hf_bert.py --device cpu --layers 2 --width 64 --heads 2 --vocab 512 \\
      --batch 2 --seq 64 --steps 2 --warmup 1                   # a tiny check on CPU

BERT-base by default (12 x 768, 12 heads, vocab 30522, 512 positions, dropout 0.1), built from
a BertConfig (no weights are downloaded), SDPA attention, torch.compile, bf16 autocast and
fused AdamW. ceil(15%) of each row's positions are masked BERT's way (80% [MASK], 10% random,
10% kept) and labelled; the rest are labelled -100. `mlm` passes no attention mask (packed
windows, as configs/mlm.py attends by length only); `mlm_nsp` passes an all-ones mask and
sentence A/B token types split at the middle, plus a random next-sentence label.

`--logits all` (the default) is the models' own forward, which computes vocabulary logits at
every position and ignores the unlabelled ones in the loss; `--logits masked` runs the same
modules (encoder, then the model's heads) with the vocabulary projection on the masked
positions only, as the project's MLM does.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

import peer_common

_MASK_ID = 103  # [MASK] in BERT's uncased vocabulary; the first ordinary id is 999
_FIRST_ORDINARY_ID = 999


def mask_tokens(generator: torch.Generator, tokens: torch.Tensor, count: int,
                vocab: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
  """(inputs, labels [B, T] with -100 off the targets, target positions [B, count])."""
  batch, seq = tokens.shape
  positions = peer_common.choose_positions(generator, batch, seq, count)
  labels = torch.full_like(tokens, -100)
  labels.scatter_(1, positions, tokens.gather(1, positions))
  inputs = tokens.clone()
  draw = torch.rand((batch, count), generator=generator)
  replace = torch.where(draw < 0.8, torch.full_like(positions, _MASK_ID),
                        peer_common.random_tokens(generator, (batch, count),
                                                  min(_FIRST_ORDINARY_ID, vocab - 1), vocab))
  replace = torch.where(draw < 0.9, replace, tokens.gather(1, positions))
  inputs.scatter_(1, positions, replace)
  return inputs, labels, positions


class MaskedHeads(torch.nn.Module):
  """A BERT model's encoder, then its heads with the vocabulary projection on the masked
  positions only; returns the loss (MLM, plus NSP for BertForPreTraining)."""

  def __init__(self, model: torch.nn.Module):
    super().__init__()
    self.model = model

  def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    model = self.model
    pretraining = hasattr(model.cls, 'seq_relationship')
    out = model.bert(input_ids=batch['input_ids'], token_type_ids=batch.get('token_type_ids'),
                     attention_mask=batch.get('attention_mask'))
    hidden = out[0]
    positions = batch['positions']
    picked = hidden.gather(1, positions[..., None].expand(-1, -1, hidden.shape[-1]))
    targets = batch['labels'].gather(1, positions)
    heads = model.cls.predictions if pretraining else model.cls
    logits = heads(picked)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
    if pretraining:
      nsp = model.cls.seq_relationship(out[1])
      loss = loss + F.cross_entropy(nsp.float(), batch['next_sentence_label'])
    return loss


def main() -> None:
  p = peer_common.parser(__doc__.splitlines()[0], batch=256, seq=128)
  p.add_argument('--objective', default='mlm', choices=('mlm', 'mlm_nsp'),
                 help='mlm: BertForMaskedLM; mlm_nsp: BertForPreTraining (MLM + NSP).')
  p.add_argument('--logits', default='all', choices=('all', 'masked'),
                 help='Vocabulary logits at every position (the models\' forward) or at the '
                 'masked positions only.')
  p.add_argument('--layers', type=int, default=12)
  p.add_argument('--width', type=int, default=768)
  p.add_argument('--heads', type=int, default=12)
  p.add_argument('--vocab', type=int, default=30522)
  p.add_argument('--mask-rate', type=float, default=0.15)
  p.add_argument('--attention', default='sdpa', help='attn_implementation (sdpa or eager).')
  args = p.parse_args()

  import transformers  # pylint: disable=import-outside-toplevel

  def build(device):
    config = transformers.BertConfig(
        vocab_size=args.vocab, hidden_size=args.width, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, intermediate_size=4 * args.width,
        max_position_embeddings=max(512, args.seq), type_vocab_size=2,
        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
        attn_implementation=args.attention)
    model_class = (transformers.BertForMaskedLM if args.objective == 'mlm'
                   else transformers.BertForPreTraining)
    model = model_class(config).to(device)
    count = math.ceil(args.seq * args.mask_rate)
    generator = torch.Generator().manual_seed(args.seed)
    batches = []
    for _ in range(2):
      tokens = peer_common.random_tokens(generator, (args.batch, args.seq),
                                         min(_FIRST_ORDINARY_ID, args.vocab - 1), args.vocab)
      inputs, labels, positions = mask_tokens(generator, tokens, count, args.vocab)
      batch = {'input_ids': inputs, 'labels': labels, 'positions': positions}
      if args.objective == 'mlm_nsp':
        types = torch.zeros_like(tokens)
        types[:, args.seq // 2:] = 1
        batch.update(token_type_ids=types, attention_mask=torch.ones_like(tokens),
                     next_sentence_label=torch.randint(0, 2, (args.batch,), generator=generator))
      batches.append({k: v.to(device) for k, v in batch.items()})

    def loss_all(forward, batch):
      kwargs = {k: v for k, v in batch.items() if k != 'positions'}
      return forward(**kwargs).loss

    def loss_masked(forward, batch):
      return forward(batch)

    if args.logits == 'all':
      loss_fn, module = loss_all, model
    else:
      module = MaskedHeads(model)
      loss_fn = loss_masked
    info = {'vocab': args.vocab, 'layers': args.layers, 'width': args.width,
            'objective': args.objective, 'targets': count,
            'logits': 'all positions' if args.logits == 'all' else 'masked positions',
            'attention': config._attn_implementation}  # pylint: disable=protected-access
    return module, loss_fn, batches, info

  name = 'BertForMaskedLM' if args.objective == 'mlm' else 'BertForPreTraining'
  peer_common.run(args, f'hf {name}', build)


if __name__ == '__main__':
  main()
