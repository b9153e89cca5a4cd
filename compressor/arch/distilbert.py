import dataclasses

from .base import register
from .bert import BERT

# DistilBERT's block (transformers 4.57 TransformerBlock) is BERT's post-norm layer with
# other names: the attention core `attention` (MultiHeadSelfAttention) owns q_lin, k_lin,
# v_lin and out_lin and reshapes with its n_heads and dim (= n_heads * head width)
# attributes; it is called as attention(query=x, key=x, value=x, ...), so an emptied core
# reads its input by the keyword `query` and returns out_lin's bias. The FFN is
# ffn.lin1 -> activation -> ffn.lin2. No token types; the config names the FFN size
# hidden_dim and derives the head width as dim / n_heads.
DISTILBERT = register(
    dataclasses.replace(
        BERT,
        name="distilbert",
        model_types=("distilbert",),
        layers="transformer.layer",
        attn_core="attention",
        query="attention.q_lin",
        key="attention.k_lin",
        value="attention.v_lin",
        attn_out="attention.out_lin",
        ffn_in=("ffn.lin1",),
        ffn_out="ffn.lin2",
        num_heads="n_heads",
        head_dim="attention_head_size",
        width_attrs=("dim",),
        empty_attention_returns="projection",
        attn_input="query",
        attn_residual_sum="sa_layer_norm",
        ffn_residual_sum="output_layer_norm",
        onnx_inputs=("input_ids", "attention_mask"),
        config_ffn="hidden_dim",
        config_heads="n_heads",
    )
)
