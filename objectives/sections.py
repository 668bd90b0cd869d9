"""Every objective's settings with their defaults: the config section `config.<name>`.

Kept apart from the objectives, which import jax, so that a config loads in milliseconds
without it; each objective's file registers under its name here and reads its defaults from
here. A new objective adds its section (`{}` if it has no settings).
"""

SECTIONS: dict[str, dict] = {
    'clm': dict(
        # > 0: positions per chunk of the fused logits + cross-entropy; 0: all at once
        loss_chunk=0,
    ),
    'deshuffle': {},
    'electra': dict(
        # fraction of the candidate tokens (real, not special, not whitespace-only pieces) the
        # generator predicts (0.25 for ELECTRA-Large)
        mask_rate=0.15,
        max_predictions=0,  # per sequence; 0: ceil(seq_len * mask_rate)
        generator_fraction=0.25,  # generator width / discriminator width (paper: 1/4 to 1/2 best)
        generator_weight=1.0,
        discriminator_weight=50.0,  # the paper's lambda
        temperature=1.0,  # of the generator's sampling softmax
    ),
    'mlm': dict(
        mask_rate=0.15,  # of the candidate tokens, as ELECTRA's (whitespace-only pieces never chosen)
        max_predictions=0,  # 0: ceil(seq_len * mask_rate)
        mask_token_rate=0.8,
        random_token_rate=0.1,  # the rest of the chosen tokens stay unchanged
        unit='token',  # token | word | span
        span_p=0.2,  # SpanBERT's geometric parameter (unit=span)
        span_max=10,  # longest span in words (unit=span)
        sbo=False,  # SpanBERT's span boundary objective (unit=span), added to the MLM loss
    ),
    'nsp': {},
    'plm': dict(
        k=6,  # partial prediction: predict about 1/k of the tokens (XLNet's K)
        num_predict=0,  # targets per sequence; 0: round(seq_len / k)
        max_span=5,  # longest span (XLNet's max_gram)
    ),
    'prefix_lm': {},
    'sop': {},
    'span_corruption': dict(
        noise_density=0.15,  # fraction of the real tokens corrupted (T5, UL2 R: 0.15; X: 0.5)
        mean_span_length=3.0,  # mean noise span length (T5, UL2 R: 3; X: 32 or 64)
        sequential=False,  # one span at the end (not UL2's S-denoiser: that is prefix_lm)
    ),
}
