import dataclasses

from .base import register
from .bert import BERT

# ELECTRA's encoder (the discriminator and the generator alike) is BERT's module for module
# (ElectraSelfAttention has BERT's attribute names); only its embeddings differ, with an
# embeddings_project when embedding_size != hidden_size, which pruning leaves alone.
ELECTRA = register(dataclasses.replace(BERT, name="electra", model_types=("electra",)))
