from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# CI sets this: there the real data must be present, and a missing folder fails instead
# of skipping, so a green run never hides tests that did not run.
REQUIRE_SHARED = os.environ.get("COMPRESSOR_REQUIRE_SHARED_DATA") == "1"


def pytest_configure(config):
    # `-m smoke` (tests/smoke_t5.sh): recipe run, export with parity, evaluation, the
    # one-line error rule, on tiny models; what CI runs under a second transformers major.
    config.addinivalue_line("markers", "smoke: a minute-long subset (recipe run, ONNX export + parity, evaluate)")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real GLUE TSVs and WikiText-2) beside the repo. A user's fresh clone
    has no such folder: the tests that read it skip, saying so (the data is never copied
    into the repo)."""
    if not (SHARED / "glue").is_dir():
        msg = f"real data folder {SHARED} not found (GLUE SST-2/MRPC TSVs and WikiText-2 beside the repo)"
        if REQUIRE_SHARED:
            pytest.fail(msg + "; COMPRESSOR_REQUIRE_SHARED_DATA=1 requires it")
        pytest.skip(msg)
    return SHARED

WORDS = "the a movie film good bad great awful plot actor , . ! is was not very".split()


def tiny_config(kind: str, **kw):
    from transformers import BertConfig, GPT2Config, RobertaConfig

    common = dict(attn_implementation="eager")
    if kind == "bert":
        return BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                          intermediate_size=37, max_position_embeddings=64, **common, **kw)
    if kind == "roberta":
        return RobertaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                             intermediate_size=37, max_position_embeddings=70, **common, **kw)
    if kind == "gpt2":
        return GPT2Config(vocab_size=64, n_embd=32, n_layer=3, n_head=4, n_positions=64, n_inner=37,
                          **common, **kw)
    raise ValueError(kind)


def tiny_model(kind: str, seed: int = 0, cls=None):
    from transformers import BertModel, GPT2LMHeadModel, RobertaModel

    torch.manual_seed(seed)
    cls = cls or {"bert": BertModel, "roberta": RobertaModel, "gpt2": GPT2LMHeadModel}[kind]
    m = cls(tiny_config(kind))
    # Random init leaves LayerNorms at identity and biases at zero; perturb everything
    # so a wrong slice cannot hide behind zeros.
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m.eval()


def tiny_tokenizer(folder: Path):
    """A BERT WordPiece tokenizer over WORDS, built from a tokenizers.Tokenizer object:
    transformers 5 ignores ``BertTokenizerFast(vocab_file=...)`` (it builds an empty
    vocabulary), while ``tokenizer_object`` is honoured by 4.57 and 5.x alike."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tk = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tk.decoder = decoders.WordPiece()
    tok = BertTokenizerFast(tokenizer_object=tk)
    assert len(tok) == len(vocab) and tok("the movie")["input_ids"] == [2, 5, 7, 3]  # the fixture itself
    return tok


@pytest.fixture
def tiny_bert_dir(tmp_path) -> Path:
    """A tiny BERT saved as a Hugging Face folder, with a tokenizer."""
    folder = tmp_path / "tiny-bert"
    folder.mkdir()
    model = tiny_model("bert")
    model.save_pretrained(folder)
    tiny_tokenizer(folder).save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_gpt2_dir(tmp_path) -> Path:
    folder = tmp_path / "tiny-gpt2"
    tiny_model("gpt2").save_pretrained(folder)
    return folder


def batch(kind: str, seed: int = 0, batch_size: int = 3, seq: int = 11):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 64, (batch_size, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[1, seq - 4 :] = 0  # one padded row
    return ids, mask


def outputs(model, ids, mask) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask)
    return out.logits if hasattr(out, "logits") and out.logits is not None else out.last_hidden_state
