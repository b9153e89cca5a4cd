"""The capture pass: right activations at the right token, padding has no effect."""

from __future__ import annotations

import pytest
import torch

from compressor.arch import adapter_for
from compressor.capture import run_capture
from compressor.data.calibration import Batch, calibration_batches
from compressor.recipe import CalibrationConfig
from compressor.scorers.base import Scorer
from tests.conftest import tiny_model


class Recorder(Scorer):
    name = "recorder"
    needs = frozenset({"attentions", "ffn_summary"})

    def __init__(self):
        self.batches = []

    def update(self, batch):
        self.batches.append(batch)


def capture(model, batches, rec: Recorder | None = None):
    rec = Recorder() if rec is None else rec
    run_capture(model, adapter_for(model), batches, [rec], progress=False)
    return rec.batches


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_summary_activation_matches_a_manual_forward(kind):
    model = tiny_model(kind)
    a = adapter_for(model)
    ids = torch.randint(5, 60, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    [b] = capture(model, [Batch(ids, mask)])
    # manual: the activation of sequence 1 alone, unpadded, at its summary token
    seen = {}
    h = a.module(2, "ffn_out").register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    with torch.no_grad():
        model(input_ids=ids[1:, :6], attention_mask=mask[1:, :6])
    h.remove()
    pos = 0 if kind == "bert" else 5
    torch.testing.assert_close(b.ffn_summary[2][1], seen["x"][0, pos], atol=1e-5, rtol=0)
    assert b.ffn_summary[2].shape == (2, a.ffn_size(2))
    assert b.attentions[0].shape == (2, 4, 9, 9)
    # padding keys get no attention
    assert b.attentions[0][1, :, :, 6:].abs().max() == 0


def test_random_tokens_have_special_tokens_and_lengths(tiny_bert_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    model = tiny_model("bert")
    cfg = CalibrationConfig(num_sequences=50, batch_size=16, min_length=5, max_length=9)
    batches = calibration_batches(cfg, tok, model.config, seed=3)
    assert sum(b.input_ids.shape[0] for b in batches) == 50
    for b in batches:
        lengths = b.attention_mask.sum(1)
        assert ((lengths >= 5) & (lengths <= 9)).all()
        assert (b.input_ids[:, 0] == tok.cls_token_id).all()
        last = b.input_ids[torch.arange(len(lengths)), lengths - 1]
        assert (last == tok.sep_token_id).all()
        inner = b.input_ids[:, 1:][b.attention_mask[:, 1:].bool()]
        assert not torch.isin(inner[inner != tok.sep_token_id], torch.tensor(tok.all_special_ids)).any()
    again = calibration_batches(cfg, tok, model.config, seed=3)
    assert all(torch.equal(x.input_ids, y.input_ids) for x, y in zip(batches, again, strict=True))


def test_text_file_source(tmp_path, tiny_bert_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    p = tmp_path / "t.txt"
    p.write_text("the movie was good .\n\nthe plot is not very great !\na film\n")
    cfg = CalibrationConfig(source="text_file", path=str(p), num_sequences=10, batch_size=2, max_length=5)
    batches = calibration_batches(cfg, tok, tiny_model("bert").config, 0)
    assert sum(len(b.input_ids) for b in batches) == 3  # the empty line is skipped
    assert max(b.attention_mask.sum(1).max().item() for b in batches) == 5  # truncated


def test_random_tokens_skip_ids_text_never_produces(tmp_path):
    """[unusedN] placeholders and added special tokens are never sampled; ordinary words are."""
    from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    from compressor.data.calibration import never_produced_ids

    vocab = ["[PAD]", "[unused0]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[unused2]"] + [f"w{i}" for i in range(8)]
    tk = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)  # BertTokenizerFast reads its state
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 4), ("[SEP]", 5)])
    tok = BertTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                            pad_token="[PAD]", mask_token="[MASK]")
    tok.add_tokens([AddedToken("<ctrl>", special=True)], special_tokens=True)
    assert never_produced_ids(tok) == {0, 1, 2, 3, 4, 5, 6, 7, 16}
    config = tiny_model("bert").config
    config.vocab_size = len(tok)
    cfg = CalibrationConfig(num_sequences=200, batch_size=50, min_length=6, max_length=10)
    inner = torch.cat([b.input_ids[:, 1:][b.attention_mask[:, 1:].bool()] for b in calibration_batches(cfg, tok, config, 0)])
    inner = inner[inner != 5]
    assert set(inner.tolist()) == set(range(8, 16))  # every ordinary word, nothing else


def test_sentence_pairs_carry_token_types_into_the_model(tmp_path, tiny_bert_dir):
    """GLUE pairs: the batch holds the tokenizer's token types, and capture feeds them to
    the model (different attention than with all types 0)."""
    from transformers import AutoTokenizer

    from tests.unit.test_glue import write_glue

    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    root = write_glue(tmp_path / "glue", n_train=8, n_dev=8)
    model = tiny_model("bert")
    with torch.no_grad():  # make the segment embedding matter
        model.embeddings.token_type_embeddings.weight.normal_(0, 1.0)
    pairs = calibration_batches(CalibrationConfig(source="glue", task="mrpc", data_dir=str(root), split="dev",
                                                  num_sequences=8, batch_size=8), tok, model.config, 0)
    single = calibration_batches(CalibrationConfig(source="glue", task="sst2", data_dir=str(root), split="dev",
                                                   num_sequences=8, batch_size=8), tok, model.config, 0)
    assert single[0].token_type_ids is None
    b = pairs[0]
    assert b.token_type_ids is not None and b.token_type_ids.shape == b.input_ids.shape
    first_sep = (b.input_ids == tok.sep_token_id).int().argmax(1)
    for row in range(b.input_ids.shape[0]):
        n = int(b.attention_mask[row].sum())
        assert b.token_type_ids[row, : first_sep[row] + 1].eq(0).all() and b.token_type_ids[row, first_sep[row] + 1 : n].eq(1).all()
    [with_types] = capture(model, [b])
    [without] = capture(model, [Batch(b.input_ids, b.attention_mask)])
    assert torch.equal(with_types.token_type_ids, b.token_type_ids)
    assert (with_types.attentions[0] - without.attentions[0]).abs().max() > 1e-3
