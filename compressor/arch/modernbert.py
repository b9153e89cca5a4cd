from .base import ArchSpec, register

# ModernBERT (transformers 4.57): pre-norm layers `layers`, attention core `attn` with one
# fused Wqkv (a Linear laid out [q | k | v], split by view(batch, seq, 3, num_heads,
# head_dim)) and Wo, both owned by the core; num_heads and all_head_size are per-instance
# attributes, so per-layer head counts need only those updated. RoPE acts within each
# head (over head_dim), and the local (sliding-window) or global choice per layer changes
# masks, not weights, so both survive head removal. The MLP is a GLU with one fused input
# Wi = [input | gate] (chunk(2)): channel j is rows j and j + F of Wi and column j of Wo.
# No biases by default (attention_bias/mlp_bias False): an emptied attention returns Wo's
# output on an empty context (zeros), an emptied MLP zeros, and the residual carries the
# layer. The classifier pools [CLS] (classifier_pooling "cls") or the mean.
MODERNBERT = register(
    ArchSpec(
        name="modernbert",
        model_types=("modernbert",),
        layers="layers",
        attn_core="attn",
        qkv="attn.Wqkv",
        attn_out="attn.Wo",
        ffn_in=("mlp.Wi",),
        ffn_in_chunks=2,
        ffn_out="mlp.Wo",
        # pre-norm: the attention's residual sum is what mlp_norm reads, the FFN's the layer output
        attn_residual_sum="mlp_norm",
        ffn_residual_sum="",
        num_heads="num_heads",
        head_dim="head_dim",
        width_attrs=("all_head_size",),
        summary_token="first",
        attention_maps_by_class=True,  # transformers 5 records attention maps by class hooks
        empty_attention_returns="projection",
        empty_ffn_returns="zeros",
        norm="layernorm",
        onnx_inputs=("input_ids", "attention_mask"),
        ort_model_type="bert",
        config_ffn="intermediate_size",
        config_heads="num_attention_heads",
    )
)
