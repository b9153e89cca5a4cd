import dataclasses

from .base import register
from .llama import LLAMA

# Qwen3 is Llama's layout plus q_norm/k_norm, RMSNorms over head_dim shared by all heads,
# which pruning heads leaves as they are. ONNX Runtime's optimizer knows it as "qwen3".
QWEN3 = register(dataclasses.replace(LLAMA, name="qwen3", model_types=("qwen3",), ort_model_type="qwen3"))
