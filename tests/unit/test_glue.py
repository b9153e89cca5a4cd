"""GLUE data, metrics, evaluation (PyTorch and ONNX) and fine-tuning on tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy.stats import rankdata

from compressor.cli import main
from compressor.data.glue import GLUE_TASKS, DataError, glue_task, load_glue
from compressor.errors import CompressorError
from compressor.evaluate.glue import TorchClassifier, encode, evaluate_glue, score_split
from compressor.evaluate.metrics import glue_metrics
from compressor.finetune import distillation_loss, finetune
from compressor.recipe import DistillConfig, FinetuneConfig
from compressor.task_head import check_head, with_task_head
from tests.conftest import WORDS, tiny_model, tiny_tokenizer

POS, NEG = ["good", "great"], ["bad", "awful"]


def _sentences(n: int, seed: int) -> tuple[list[str], list[int]]:
    """Toy sentiment: the label is whether the sentence holds a positive word."""
    rng = np.random.default_rng(seed)
    filler = [w for w in WORDS if w not in POS + NEG and w not in ",.!"]
    texts, labels = [], []
    for i in range(n):
        y = int(rng.integers(2))
        words = list(rng.choice(filler, size=int(rng.integers(3, 8))))
        words.insert(int(rng.integers(len(words) + 1)), str(rng.choice(POS if y else NEG)))
        texts.append(" ".join(words))
        labels.append(y)
    return texts, labels


def write_glue(root, n_train: int = 256, n_dev: int = 64):
    """A GLUE folder in the original TSV layouts (headers, BOM, CoLA without header)."""
    tr, ytr = _sentences(n_train, 0)
    dv, ydv = _sentences(n_dev, 1)
    sst = root / "SST-2"
    sst.mkdir(parents=True)
    for name, texts, ys in (("train", tr, ytr), ("dev", dv, ydv)):
        (sst / f"{name}.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in zip(texts, ys)))
    (sst / "test.tsv").write_text("index\tsentence\n0\tgood movie\n")
    mrpc = root / "MRPC"
    mrpc.mkdir()
    rows = [f'{y}\t{i}\t{i + 1}\t"{a}\t{b} "quoted\n' for i, (a, b, y) in enumerate(zip(dv, tr, ydv))]
    (mrpc / "dev.tsv").write_text("\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n" + "".join(rows))
    (mrpc / "train.tsv").write_text((mrpc / "dev.tsv").read_text())
    return root


@pytest.fixture
def glue_dir(tmp_path):
    return write_glue(tmp_path / "glue")


# ---- data -------------------------------------------------------------------------

ORIGINAL_LAYOUTS = {
    # task: (file, header or None, row, expected texts, expected label)
    "cola": ("dev.tsv", None, "gj04\t1\t\tThe book was read .", ("The book was read .",), 1),
    "sst2": ("dev.tsv", "sentence\tlabel", "a fine film\t1", ("a fine film",), 1),
    "mrpc": ("dev.tsv", "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String", '0\t1\t2\t"A" b\tc "d',
             ('"A" b', 'c "d'), 0),
    "stsb": ("dev.tsv", "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
             "0\tmain\tx\t2012\t1\tnone\tnone\tA man.\tA person.\t3.8", ("A man.", "A person."), 3.8),
    "qqp": ("dev.tsv", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate", "1\t2\t3\tWhy?\tHow?\t1",
            ("Why?", "How?"), 1),
    "mnli": ("dev_matched.tsv", "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\tlabel1\tgold_label",
             "0\t1\t2\tfiction\tP.\tH.\tneutral\tcontradiction", ("P.", "H."), 2),
    "qnli": ("dev.tsv", "index\tquestion\tsentence\tlabel", "0\tQ?\tS.\tnot_entailment", ("Q?", "S."), 1),
    "rte": ("dev.tsv", "index\tsentence1\tsentence2\tlabel", "0\tA.\tB.\tentailment", ("A.", "B."), 0),
    "wnli": ("dev.tsv", "index\tsentence1\tsentence2\tlabel", "0\tA.\tB.\t1", ("A.", "B."), 1),
}


@pytest.mark.parametrize("name", sorted(GLUE_TASKS))
def test_every_task_reads_its_original_layout(tmp_path, name):
    task = glue_task(name)
    file, header, row, texts, label = ORIGINAL_LAYOUTS[name]
    (tmp_path / task.folder).mkdir()
    (tmp_path / task.folder / file).write_text((header + "\n" if header else "") + row + "\n")
    split = load_glue(name, str(tmp_path), "dev")
    assert split.texts == [texts]
    assert split.labels.tolist() == pytest.approx([label])
    assert split.labels.dtype == (np.float32 if name == "stsb" else np.int64)


def test_real_glue_files(shared_data):
    sst = load_glue("sst2", str(shared_data / "glue"), "dev")
    assert len(sst) == 872 and set(sst.labels.tolist()) == {0, 1}
    mrpc = load_glue("MRPC", str(shared_data / "glue"), "dev")
    assert len(mrpc) == 408 and all(len(t) == 2 for t in mrpc.texts)
    assert int(mrpc.labels.sum()) == 279  # the published dev split: 279 paraphrases of 408
    assert any('"' in a or '"' in b for a, b in load_glue("mrpc", str(shared_data / "glue"), "train").texts)


def test_bad_data_names_what_is_wrong(tmp_path, glue_dir):
    with pytest.raises(DataError, match=r"unknown GLUE task 'sst3'; valid: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli"):
        load_glue("sst3", str(glue_dir), "dev")
    with pytest.raises(DataError, match=r"GLUE data file not found: .*RTE/dev.tsv"):
        load_glue("rte", str(glue_dir), "dev")
    with pytest.raises(DataError, match=r"GLUE data folder not found"):
        load_glue("rte", str(tmp_path / "nowhere"), "dev")
    (glue_dir / "SST-2" / "dev.tsv").write_text("sentence\tlabel\nfine\t1\nodd\tpositive\n")
    with pytest.raises(DataError, match=r"dev.tsv line 3: label 'positive' in column 'label' is not one of task sst2's labels \(0, 1\)"):
        load_glue("sst2", str(glue_dir), "dev")
    (glue_dir / "SST-2" / "dev.tsv").write_text("text\tlabel\nfine\t1\n")
    with pytest.raises(DataError, match=r"has no column 'sentence'"):
        load_glue("sst2", str(glue_dir), "dev")
    with pytest.raises(DataError, match=r"no label column 'label'"):
        load_glue("sst2", str(glue_dir), "test")
    with pytest.raises(DataError, match=r"only for mnli"):
        load_glue("sst2", str(glue_dir), "dev_matched")


def test_subset_is_seeded_and_keeps_pairs(glue_dir):
    full = load_glue("sst2", str(glue_dir), "train")
    a, b = full.subset(50, seed=3), full.subset(50, seed=3)
    assert a.texts == b.texts and len(a) == 50
    index = {t: i for i, t in enumerate(full.texts)}
    assert all(full.labels[index[t]] == y for t, y in zip(a.texts, a.labels))
    assert full.subset(10_000) is full
    ds = a.to_dataset()
    assert ds.column_names == ["text_a", "label"] and len(ds) == 50


# ---- metrics ------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_metrics_match_direct_formulas(seed):
    rng = np.random.default_rng(seed)
    ref = rng.integers(0, 2, 200)
    pred = np.where(rng.random(200) < 0.7, ref, 1 - ref)
    tp = int(((pred == 1) & (ref == 1)).sum())
    fp = int(((pred == 1) & (ref == 0)).sum())
    fn = int(((pred == 0) & (ref == 1)).sum())
    tn = int(((pred == 0) & (ref == 0)).sum())
    mrpc = glue_metrics(glue_task("mrpc"), pred, ref)
    assert mrpc["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert mrpc["accuracy"] == pytest.approx((tp + tn) / 200)
    mcc = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert glue_metrics(glue_task("cola"), pred, ref)["matthews_correlation"] == pytest.approx(mcc)
    y = rng.normal(size=100)
    p = y + rng.normal(size=100)
    sts = glue_metrics(glue_task("stsb"), p, y)
    assert sts["pearson"] == pytest.approx(np.corrcoef(p, y)[0, 1])
    assert sts["spearman"] == pytest.approx(np.corrcoef(rankdata(p), rankdata(y))[0, 1])
    mnli = glue_metrics(glue_task("mnli"), rng.integers(0, 3, 50), rng.integers(0, 3, 50))
    assert set(mnli) == {"accuracy"}


def test_constant_predictions_give_zero_correlation():
    assert glue_metrics(glue_task("stsb"), np.ones(5), np.arange(5.0)) == {"pearson": 0.0, "spearman": 0.0}
    assert glue_metrics(glue_task("cola"), np.ones(6, int), np.array([0, 1] * 3))["matthews_correlation"] == 0.0


# ---- heads, evaluation, ONNX --------------------------------------------------------


def _classifier(tmp_path, num_labels=2, seed=0):
    from transformers import BertForSequenceClassification

    model = tiny_model("bert", seed=seed, cls=lambda c: BertForSequenceClassification(_labels(c, num_labels)))
    return model, tiny_tokenizer(tmp_path)


def _labels(config, n):
    config.num_labels = n
    return config


def test_evaluation_matches_one_example_at_a_time(tmp_path, glue_dir):
    model, tok = _classifier(tmp_path)
    data = load_glue("mrpc", str(glue_dir), "dev")
    metrics, logits = score_split(TorchClassifier(model, tok), data, batch_size=7, max_length=32)
    with torch.no_grad():
        one = np.concatenate([model(**encode(tok, [t], 32)).logits.numpy() for t in data.texts])
    np.testing.assert_allclose(logits, one, atol=1e-5)
    assert metrics["accuracy"] == pytest.approx(float((one.argmax(-1) == data.labels).mean()))


def test_heads_are_checked_and_added(tmp_path):
    from compressor import apply_plan
    from compressor.types import PruningPlan

    base = tiny_model("bert")
    with pytest.raises(CompressorError, match=r"has no classification head.*compress finetune --task sst2"):
        check_head(base, glue_task("sst2"))
    three, _ = _classifier(tmp_path, num_labels=3)
    with pytest.raises(CompressorError, match=r"head with 3 output\(s\); task sst2 needs 2"):
        check_head(three, glue_task("sst2"))
    pruned = apply_plan(base, PruningPlan.build(heads={0: [1, 2], 2: [0, 1, 2, 3]}, neurons={1: range(20)}))
    head = with_task_head(pruned, glue_task("stsb"))
    check_head(head, glue_task("stsb"))
    ids = torch.randint(5, 64, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(head.bert(ids).last_hidden_state, pruned(ids).last_hidden_state, rtol=0, atol=0)
    assert with_task_head(head, glue_task("stsb")) is head


def test_onnx_and_pytorch_give_the_same_metric(tmp_path, glue_dir):
    pytest.importorskip("onnxruntime")
    from compressor.evaluate.glue import runner_for
    from compressor.export import export_model
    from compressor.models import save_model

    model, tok = _classifier(tmp_path)
    save_model(model, tmp_path / "m", tok)
    export_model(model, tok, tmp_path / "onnx", optimize_graph=True)
    torch_res = evaluate_glue(runner_for(str(tmp_path / "m")), "sst2", str(glue_dir), max_length=32)
    onnx_res = evaluate_glue(runner_for(str(tmp_path / "onnx")), "sst2", str(glue_dir), max_length=32)
    opt_res = evaluate_glue(runner_for(str(tmp_path / "onnx" / "model_optimized.onnx")), "sst2", str(glue_dir),
                            max_length=32)
    assert onnx_res.backend == "onnxruntime" and torch_res.backend == "pytorch"
    assert onnx_res.metrics == torch_res.metrics == opt_res.metrics
    headless = tiny_model("bert")
    export_model(headless, tok, tmp_path / "onnx-base", optimize_graph=False)
    with pytest.raises(CompressorError, match="not classification logits"):
        runner_for(str(tmp_path / "onnx-base"))


# ---- fine-tuning --------------------------------------------------------------------


def test_distillation_loss_limits():
    torch.manual_seed(0)
    s, t = torch.randn(8, 3), torch.randn(8, 3)
    y = torch.randint(0, 3, (8,))
    ce = torch.nn.functional.cross_entropy(s, y)
    assert distillation_loss(s, t, y, 0.0, 2.0, False) == pytest.approx(ce.item())
    assert distillation_loss(s, s, y, 1.0, 2.0, False).item() == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(s, t, y, 1.0, 2.0, False).item() > 0
    r = torch.randn(8, 1)
    assert distillation_loss(r, r, torch.randn(8), 1.0, 1.0, True).item() == pytest.approx(0.0)


def test_finetune_learns_the_toy_task(tmp_path, glue_dir):
    tok = tiny_tokenizer(tmp_path)
    train = load_glue("sst2", str(glue_dir), "train")
    model = tiny_model("bert")
    cfg = FinetuneConfig(max_steps=60, lr=3e-3, batch_size=16, warmup_ratio=0.1, seed=0)
    tuned, res = finetune(model, tok, train, cfg, max_length=16, progress=False)
    acc = evaluate_glue(TorchClassifier(tuned, tok), "sst2", str(glue_dir), max_length=16).metrics["accuracy"]
    assert res.steps == 60 and res.examples_seen == 960
    assert acc >= 0.9, acc
    # distilling from the tuned model into a fresh one: the KD path runs and also learns
    student, res2 = finetune(tiny_model("bert", seed=1), tok, train,
                             FinetuneConfig(max_steps=60, lr=3e-3, batch_size=16, distill=DistillConfig(0.5, 2.0)),
                             max_length=16, teacher=tuned, progress=False)
    assert res2.distilled
    assert evaluate_glue(TorchClassifier(student, tok), "sst2", str(glue_dir), max_length=16).metrics["accuracy"] >= 0.9
    with pytest.raises(CompressorError, match="distillation teacher"):
        finetune(tiny_model("bert"), tok, train, FinetuneConfig(max_steps=1, distill=DistillConfig()), teacher=model)


# ---- command line -------------------------------------------------------------------


def test_cli_finetune_then_evaluate(tmp_path, glue_dir, tiny_bert_dir):
    r = CliRunner()
    out = tmp_path / "tuned"
    res = r.invoke(main, ["finetune", "--model", str(tiny_bert_dir), "--task", "sst2", "--data-dir", str(glue_dir),
                          "--output", str(out), "--max-steps", "5", "--batch-size", "8", "--quiet"])
    assert res.exit_code == 0, res.output
    assert (out / "finetune.json").is_file() and (out / "model.safetensors").is_file()
    res = r.invoke(main, ["evaluate", "--model", str(out), "--task", "sst2", "--data-dir", str(glue_dir),
                          "--json", str(tmp_path / "e.json"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "sst2 dev (pytorch, 64 examples): accuracy" in res.output
    bad = [
        (["evaluate", "--model", str(tiny_bert_dir), "--task", "sst2", "--data-dir", str(glue_dir)], "no classification head"),
        (["evaluate", "--model", str(out), "--task", "sst5", "--data-dir", str(glue_dir)], "unknown GLUE task 'sst5'; valid: cola"),
        (["evaluate", "--model", str(out), "--task", "rte", "--data-dir", str(glue_dir)], "RTE/dev.tsv"),
        (["evaluate", "--model", str(out), "--task", "mrpc", "--data-dir", str(glue_dir), "--split", "dev_matched"], "only for mnli"),
        (["finetune", "--model", str(out), "--task", "sst2", "--data-dir", str(glue_dir), "--output", str(out)],
         "overlaps the input model"),
        (["finetune", "--model", str(tiny_bert_dir), "--task", "sst2", "--data-dir", str(glue_dir), "--output", str(out)],
         "not empty"),
        (["finetune", "--model", str(out), "--task", "sst2", "--output", str(tmp_path / "x"), "--max-steps", "1",
          "--epochs", "1", "--data-dir", str(glue_dir)], "not both"),
    ]
    for args, msg in bad:
        res = r.invoke(main, args)
        assert res.exit_code == 2 and msg in res.output, (args, res.output)


# ---- recipe stages ------------------------------------------------------------------


@pytest.mark.smoke
def test_recipe_finetunes_prunes_recovers_exports_and_evaluates(tmp_path, glue_dir, tiny_bert_dir):
    pytest.importorskip("onnxruntime")
    import json

    from compressor.models import load_model
    from compressor.pipeline import run_recipe
    from compressor.recipe import parse_recipe

    recipe = parse_recipe({
        "model": str(tiny_bert_dir),
        "task": {"name": "sst2", "data_dir": str(glue_dir), "max_length": 16},
        "calibration": {"source": "glue", "num_sequences": 32, "max_length": 16},
        "scorers": ["magnitude", "persistence"],
        "targets": {"heads": {"ratio": 0.25}, "neurons": {"ratio": 0.3, "scorer": "persistence"}},
        "finetune": {"base": {"max_steps": 40, "lr": 3e-3, "batch_size": 16},
                     "recovery": {"max_steps": 20, "lr": 1e-3, "batch_size": 16, "distill": {"alpha": 0.5}}},
        "evaluate": {},
        "export": {"optimize": True},
    })
    metrics = run_recipe(recipe, output=tmp_path / "run", progress=False)
    ev = metrics["evaluation"]
    assert set(ev) == {"original", "pruned", "onnx_raw", "onnx_optimized"}
    assert ev["original"]["metrics"]["accuracy"] >= 0.9  # the base fine-tune learned the toy task
    assert ev["onnx_raw"]["metrics"] == ev["pruned"]["metrics"] == ev["onnx_optimized"]["metrics"]
    assert metrics["finetune"]["recovery"]["distilled"] and metrics["finetune"]["base"]["steps"] == 40
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["evaluation"]["pruned"]["main"] == ev["pruned"]["main"]
    # the saved model is the recovered, pruned classifier
    model = load_model(str(tmp_path / "run" / "model"))
    assert type(model).__name__ == "BertForSequenceClassification" and sum(model.config.compressor_layout["heads_per_layer"]) == 9
    res = evaluate_glue(TorchClassifier(model, tiny_tokenizer(tmp_path)), "sst2", str(glue_dir), max_length=16)
    assert res.metrics == ev["pruned"]["metrics"]


def test_recipe_task_errors_come_before_any_work(tmp_path, glue_dir, tiny_bert_dir):
    from compressor.pipeline import run_recipe
    from compressor.recipe import parse_recipe

    base = {"model": str(tiny_bert_dir), "scorers": ["magnitude"], "targets": {"heads": {"ratio": 0.25}}}
    cases = [
        ({"task": {"name": "sst2", "data_dir": str(glue_dir)}, "evaluate": {}}, "no classification head"),
        ({"task": {"name": "rte", "data_dir": str(glue_dir)}, "finetune": {"recovery": {}}}, "RTE/train.tsv"),
        ({"task": {"name": "sst2", "data_dir": str(glue_dir)}, "finetune": {"recovery": {"distill": {}}}},
         "the distillation teacher (the unpruned model; add finetune.base?)"),
        ({"task": {"name": "sst2", "data_dir": str(glue_dir)}, "finetune": {"recovery": {}}, "evaluate": {}},
         "the original model (evaluate.original)"),
    ]
    for extra, msg in cases:
        with pytest.raises(CompressorError, match=msg.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
            run_recipe(parse_recipe({**base, **extra}), output=tmp_path / "out", progress=False)
        assert not (tmp_path / "out").exists()
