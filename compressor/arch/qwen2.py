import dataclasses

from .base import register
from .llama import LLAMA

# Qwen2 is Llama's layout with biases on q/k/v (sliced with their rows; o_proj has none).
QWEN2 = register(dataclasses.replace(LLAMA, name="qwen2", model_types=("qwen2",)))
