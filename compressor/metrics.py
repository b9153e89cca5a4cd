"""Size and compute figures of a layout."""

from __future__ import annotations

from .arch.base import Layout

FLOPS_SEQ_LEN = 128


def encoder_flops_per_token(layout: Layout, seq_len: int = FLOPS_SEQ_LEN) -> int:
    """Multiply-adds x 2 per token through the transformer layers (embeddings and heads
    excluded), at a sequence length of ``seq_len``.

    Per layer with w = heads * head_dim, hidden d, FFN size f:
    q/k/v projections 2*d*3w, out projection 2*w*d, scores and context 2*2*seq*w,
    FFN 2*2*d*f. Norms, softmax and biases are lower-order and left out.
    With head groups (G query heads per key/value head) k and v are w/G wide each:
    2*d*(w + 2w/G); a gated FFN has one more input projection: 2*3*d*f.
    """
    d = layout.hidden_size
    g, fi = layout.group_size, layout.ffn_inputs
    total = 0
    for heads, ffn in zip(layout.heads_per_layer, layout.ffn_per_layer, strict=True):
        w = heads * layout.head_dim
        total += 2 * d * (w + 2 * w // g) + 2 * w * d + 4 * seq_len * w + 2 * (fi + 1) * d * ffn
    return total
