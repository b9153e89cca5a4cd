from .base import ArchSpec, register

# RoBERTa's encoder is BERT's with other embeddings; the module names are the same.
ROBERTA = register(
    ArchSpec(
        name="roberta",
        model_types=("roberta", "xlm-roberta"),
        layers="encoder.layer",
        attn_core="attention.self",
        query="attention.self.query",
        key="attention.self.key",
        value="attention.self.value",
        attn_out="attention.output.dense",
        ffn_in="intermediate.dense",
        ffn_out="output.dense",
        num_heads="num_attention_heads",
        head_dim="attention_head_size",
        width_attrs=("all_head_size",),
        summary_token="first",
        empty_attention_returns="context",
    )
)
