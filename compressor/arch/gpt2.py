from .base import ArchSpec, register

# GPT2Attention splits c_attn's output with split_size and reshapes with head_dim, so
# split_size is the width attribute (4.57 and 5.x alike). c_attn is one Conv1D laid out
# [q | k | v]. Exported graphs take position_ids, which count real tokens under left padding.
GPT2 = register(
    ArchSpec(
        name="gpt2",
        model_types=("gpt2",),
        layers="h",
        attn_core="attn",
        qkv="attn.c_attn",
        attn_out="attn.c_proj",
        ffn_in=("mlp.c_fc",),
        ffn_out="mlp.c_proj",
        num_heads="num_heads",
        head_dim="head_dim",
        width_attrs=("split_size",),
        summary_token="last",
        causal=True,
        empty_attention_returns="projection",
        attn_residual_sum="ln_2",
        ffn_residual_sum="",
        onnx_inputs=("input_ids", "attention_mask", "position_ids"),
        empty_ffn_returns="bias",
        norm="layernorm",
        ort_model_type="gpt2",
        pad_token_from_eos=True,
        config_ffn="n_inner",
        config_heads="n_head",
        kv_cache="per_layer_bhsd",
    )
)
