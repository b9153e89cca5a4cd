from .base import ArchSpec, register

# BertSelfAttention reshapes with its own num_attention_heads and all_head_size attributes
# (transformers 4.57), or with attention_head_size and -1 heads (5.x), so per-layer head
# counts only need those per-instance attributes updated; both majors keep the names.
BERT = register(
    ArchSpec(
        name="bert",
        model_types=("bert",),
        layers="encoder.layer",
        attn_core="attention.self",
        query="attention.self.query",
        key="attention.self.key",
        value="attention.self.value",
        attn_out="attention.output.dense",
        ffn_in=("intermediate.dense",),
        ffn_out="output.dense",
        num_heads="num_attention_heads",
        head_dim="attention_head_size",
        width_attrs=("all_head_size",),
        summary_token="first",
        attention_maps_by_class=True,  # transformers 5 records attention maps by class hooks
        empty_attention_returns="context",
        attn_residual_sum="attention.output.LayerNorm",
        ffn_residual_sum="output.LayerNorm",
        onnx_inputs=("input_ids", "attention_mask", "token_type_ids"),
        empty_ffn_returns="bias",
        norm="layernorm",
        ort_model_type="bert",
        config_ffn="intermediate_size",
        config_heads="num_attention_heads",
    )
)
