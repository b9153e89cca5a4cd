import dataclasses

from .base import register
from .bert import BERT

# RoBERTa's encoder is BERT's with other embeddings: the same module names.
ROBERTA = register(dataclasses.replace(BERT, name="roberta", model_types=("roberta", "xlm-roberta")))
