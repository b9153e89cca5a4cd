import dataclasses

from .base import register
from .bert import BERT

# RoBERTa's encoder is BERT's with other embeddings: the same module names. Its exported
# graph has no token_type_ids input (one token type; optimum leaves it out too).
ROBERTA = register(dataclasses.replace(BERT, name="roberta", model_types=("roberta", "xlm-roberta"),
                                       onnx_inputs=("input_ids", "attention_mask"),
                                       positions_after_padding=True))
