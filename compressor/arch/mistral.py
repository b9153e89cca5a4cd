import dataclasses

from .base import register
from .llama import LLAMA

# MistralAttention and MistralMLP are Llama's module for module (sliding-window attention
# changes the mask, not the weights' layout).
MISTRAL = register(dataclasses.replace(LLAMA, name="mistral", model_types=("mistral",)))
