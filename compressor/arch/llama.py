from .base import ArchSpec, register

# LlamaAttention (transformers 4.57 and 5.x) reshapes q/k/v with (-1, head_dim) and repeats
# each key/value head num_key_value_groups times, so removing whole groups (a key/value
# head with its query heads) changes no attribute: the head counts follow the projections'
# widths. It has no head-count attribute, hence num_heads=None. The gated FFN computes
# down(act(gate(x)) * up(x)): channel j is row j of gate and up and column j of down.
# Projections have no biases (attention_bias/mlp_bias default False); an emptied
# attention or FFN returns zeros, so the pre-norm residual passes the layer through.
LLAMA = register(
    ArchSpec(
        name="llama",
        model_types=("llama",),
        layers="layers",
        attn_core="self_attn",
        query="self_attn.q_proj",
        key="self_attn.k_proj",
        value="self_attn.v_proj",
        attn_out="self_attn.o_proj",
        ffn_in=("mlp.gate_proj", "mlp.up_proj"),
        ffn_out="mlp.down_proj",
        num_heads=None,
        head_dim="head_dim",
        group_size="num_key_value_groups",
        summary_token="last",
        causal=True,
        empty_attention_returns="projection",
        attention_maps_by_class=True,
        empty_ffn_returns="zeros",
        # pre-norm: h + attn(norm(h)) is post_attention_layernorm's input, and
        # h' + mlp(norm(h')) the layer's output (reconstruct's targets, as GPT-2's)
        attn_residual_sum="post_attention_layernorm",
        ffn_residual_sum="",
        norm="rmsnorm",
        onnx_inputs=("input_ids", "attention_mask", "position_ids"),
        ort_model_type=None,
        pad_token_from_eos=True,
        # the config states the head width (head_dim; read with getattr by Llama, Mistral,
        # Qwen2 and Qwen3), so a uniform pruned layout is a stock config
        config_ffn="intermediate_size",
        config_heads="num_attention_heads",
        config_kv_heads="num_key_value_heads",
        config_head_dim="head_dim",
        kv_cache="per_layer_bhsd",
    )
)
