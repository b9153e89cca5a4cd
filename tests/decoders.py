"""Tiny random causal language models for the decoder tests: a LLaMA-style model with
grouped-query attention (2 query heads per key/value head) and GPT-2, and a folder
holding the LLaMA one with the tiny WordPiece tokenizer of tests/conftest.py (its
[CLS] plays BOS: the tokenizer puts it before every text)."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.conftest import WORDS, tiny_model, tiny_tokenizer

VOCAB = 64
LAYERS, HEADS, KV_HEADS, FFN = 2, 4, 2, 48


def llama_config(**kw):
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=32, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=8,
                       intermediate_size=FFN, num_hidden_layers=LAYERS, vocab_size=VOCAB, max_position_embeddings=64,
                       attn_implementation="eager", tie_word_embeddings=False, bos_token_id=2, eos_token_id=3,
                       pad_token_id=0, **kw)


def tiny_llama(seed: int = 0):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    m = LlamaForCausalLM(llama_config())
    with torch.no_grad():  # RMSNorm weights start at 1: perturb everything
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m.eval()


def decoder(kind: str, seed: int = 0):
    return tiny_llama(seed) if kind == "llama" else tiny_model("gpt2", seed)


def llama_folder(folder: Path, seed: int = 0) -> Path:
    """A tiny LLaMA saved as a Hugging Face folder with the tiny tokenizer."""
    from compressor.models import save_model

    folder.mkdir(parents=True, exist_ok=True)
    save_model(tiny_llama(seed), folder, tiny_tokenizer(folder))
    return folder


def text(lines: int = 40, seed: int = 0, headings: bool = True) -> str:
    """WikiText-like text over the tiny tokenizer's words: a heading, paragraphs, blank lines."""
    g = torch.Generator().manual_seed(seed)
    out = [" = the film = \n", " \n"] if headings else []
    for i in range(lines):
        n = int(torch.randint(4, 30, (1,), generator=g))
        words = [WORDS[j] for j in torch.randint(0, len(WORDS), (n,), generator=g).tolist()]
        out.append(" " + " ".join(words) + " \n")
        if headings and i % 10 == 9:
            out += [" \n", " = = the plot = = \n", " \n"]
    return "".join(out)


def padded_batch(seed: int = 0, batch_size: int = 3, seq: int = 11, lo: int = 4):
    """ids [batch, seq] and a right-padded mask: row 1 has 4 padded positions."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(lo, VOCAB, (batch_size, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[1, seq - 4 :] = 0
    ids[1, seq - 4 :] = 0  # padded positions hold the pad id
    return ids, mask
