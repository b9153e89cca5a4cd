import dataclasses

from .base import register
from .llama import LLAMA

# Phi-3 (transformers 4.57) is Llama's decoder with fused projections: qkv_proj is laid out
# [q | k | v] with q num_attention_heads * head_dim wide and k, v num_key_value_heads *
# head_dim each (grouped-query attention), and gate_up_proj is [gate | up] (chunk(2)), so
# channel j is its rows j and j + F and down_proj's column j. Phi3Attention splits qkv at
# self.config.num_attention_heads * head_dim (the config shared by all layers) and at
# self.num_key_value_heads, so surgery updates that attribute and gives each pruned core
# a view of the config with its own head count (surgery.modules.ConfigView). Its head
# count is read from qkv_proj's width: (H + 2H/G) * head_dim.
PHI3 = register(
    dataclasses.replace(
        LLAMA,
        name="phi3",
        model_types=("phi3",),
        query=None,
        key=None,
        value=None,
        qkv="self_attn.qkv_proj",
        ffn_in=("mlp.gate_up_proj",),
        ffn_in_chunks=2,
        kv_heads_attrs=("num_key_value_heads",),
        core_config_attrs=(("num_attention_heads", "heads"),),
    )
)
