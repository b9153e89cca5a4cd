"""GLUE tasks: the original TSV layout of each task, its labels and its metrics.

A local folder holds one sub-folder per task as distributed by the GLUE site
(``<dir>/SST-2/dev.tsv``, ``<dir>/MRPC/train.tsv``, ``<dir>/MNLI/dev_matched.tsv`` ...).
Without a folder the task comes from the hub (``nyu-mll/glue``) through ``datasets``.
Labels are mapped to the hub's integer order, so a model fine-tuned on either source
reads the same label ids.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CompressorError


class DataError(CompressorError):
    """GLUE data that is missing or does not match its task."""


@dataclass(frozen=True)
class GlueTask:
    name: str
    folder: str
    text_columns: tuple[str, ...]
    label_column: str
    hub_text_columns: tuple[str, ...]
    # Raw TSV label -> class id, in the hub's order; None for regression (STS-B).
    labels: tuple[str, ...] | None
    metrics: tuple[str, ...]
    main_metric: str
    # Files without a header row (CoLA train/dev) list their columns here.
    columns: tuple[str, ...] | None = None
    # MNLI is scored on two dev sets.
    dev_splits: tuple[str, ...] = ("dev",)

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_regression(self) -> bool:
        return self.labels is None


GLUE_TASKS = {
    t.name: t
    for t in (
        GlueTask("cola", "CoLA", ("sentence",), "label", ("sentence",), ("0", "1"),
                 ("matthews_correlation",), "matthews_correlation",
                 columns=("source", "label", "original_label", "sentence")),
        GlueTask("sst2", "SST-2", ("sentence",), "label", ("sentence",), ("0", "1"), ("accuracy",), "accuracy"),
        GlueTask("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", ("sentence1", "sentence2"), ("0", "1"),
                 ("f1", "accuracy"), "f1"),
        GlueTask("stsb", "STS-B", ("sentence1", "sentence2"), "score", ("sentence1", "sentence2"), None,
                 ("pearson", "spearman"), "pearson"),
        GlueTask("qqp", "QQP", ("question1", "question2"), "is_duplicate", ("question1", "question2"), ("0", "1"),
                 ("accuracy", "f1"), "accuracy"),
        GlueTask("mnli", "MNLI", ("sentence1", "sentence2"), "gold_label", ("premise", "hypothesis"),
                 ("entailment", "neutral", "contradiction"), ("accuracy",), "accuracy",
                 dev_splits=("dev_matched", "dev_mismatched")),
        GlueTask("qnli", "QNLI", ("question", "sentence"), "label", ("question", "sentence"),
                 ("entailment", "not_entailment"), ("accuracy",), "accuracy"),
        GlueTask("rte", "RTE", ("sentence1", "sentence2"), "label", ("sentence1", "sentence2"),
                 ("entailment", "not_entailment"), ("accuracy",), "accuracy"),
        GlueTask("wnli", "WNLI", ("sentence1", "sentence2"), "label", ("sentence1", "sentence2"), ("0", "1"),
                 ("accuracy",), "accuracy"),
    )
}

# Class names in the hub's label order (nyu-mll/glue's ClassLabel names): what a saved
# classifier's config.id2label says; a regression task (STS-B) has none.
LABEL_NAMES: dict[str, tuple[str, ...]] = {
    "cola": ("unacceptable", "acceptable"),
    "sst2": ("negative", "positive"),
    "mrpc": ("not_equivalent", "equivalent"),
    "qqp": ("not_duplicate", "duplicate"),
    "mnli": ("entailment", "neutral", "contradiction"),
    "qnli": ("entailment", "not_entailment"),
    "rte": ("entailment", "not_entailment"),
    "wnli": ("not_entailment", "entailment"),
}


def label_names(task: GlueTask) -> tuple[str, ...] | None:
    """The task's class names in label-id order; None for regression."""
    if task.is_regression:
        return None
    names = LABEL_NAMES.get(task.name)
    return names if names is not None and len(names) == task.num_labels else tuple(task.labels)


SPLITS = ("train", "dev", "dev_matched", "dev_mismatched", "validation", "test")


def glue_task(name: str) -> GlueTask:
    key = name.lower().replace("-", "").replace("_", "")
    if key not in GLUE_TASKS:
        raise DataError(f"unknown GLUE task '{name}'; valid: {', '.join(GLUE_TASKS)}")
    return GLUE_TASKS[key]


@dataclass
class GlueSplit:
    """One split of a task: one or two texts per example and their labels."""

    task: GlueTask
    split: str
    texts: list[tuple[str, ...]]
    labels: np.ndarray | None  # [examples] int64 class ids, float32 scores, or None (test)
    source: str

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, n: int | None, seed: int = 0) -> GlueSplit:
        """The first n examples of a seeded shuffle; all of them when n is None or larger."""
        if n is None or n >= len(self):
            return self
        pick = np.sort(np.random.default_rng(seed).permutation(len(self))[:n])
        labels = None if self.labels is None else self.labels[pick]
        return GlueSplit(self.task, self.split, [self.texts[i] for i in pick], labels, self.source)

    def to_dataset(self):
        """The split as a ``datasets.Dataset`` (columns text_a, [text_b], label)."""
        import datasets

        cols = {"text_a": [t[0] for t in self.texts]}
        if len(self.task.text_columns) == 2:
            cols["text_b"] = [t[1] for t in self.texts]
        if self.labels is not None:
            cols["label"] = self.labels.tolist()
        return datasets.Dataset.from_dict(cols)


def read_glue_tsv(path: Path, columns: tuple[str, ...] | None = None) -> list[dict[str, str]]:
    """Rows of a GLUE TSV. MRPC starts with a byte-order mark and has bare quote
    characters inside sentences, so quoting is off and the BOM is stripped."""
    return read_glue_tsv_lines(path, columns)[0]


def read_glue_tsv_lines(path: Path, columns: tuple[str, ...] | None = None) -> tuple[list[dict[str, str]], list[int]]:
    """The rows of a GLUE TSV and the line each row is on, counted as an editor counts
    them: the csv reader skips blank lines, and its ``line_num`` after a row is that
    row's line (quoting is off, so no row spans two lines)."""
    from ..files import read_text

    text = read_text(path, "data file", DataError)  # UTF-8 (BOM dropped), else one line naming the file
    rows, lines = [], []
    reader = csv.DictReader(io.StringIO(text, newline=""), fieldnames=columns, delimiter="\t", quoting=csv.QUOTE_NONE)
    for row in reader:
        rows.append(row)
        lines.append(reader.line_num)
    return rows, lines


def _split_file(task: GlueTask, split: str) -> str:
    if split not in SPLITS:
        raise DataError(f"unknown split '{split}'; valid: {', '.join(SPLITS)}")
    if split == "validation":
        split = "dev"
    if task.name == "mnli" and split == "dev":
        split = "dev_matched"
    if split.startswith("dev_") and task.name != "mnli":
        raise DataError(f"split '{split}' exists only for mnli; {task.name} has train, dev and test")
    return split


# STS-B similarity scores are in [0, 5] (the GLUE paper); a label outside is a data error.
REGRESSION_RANGE = (0.0, 5.0)


def _labels_from_tsv(task: GlueTask, rows: list[dict], path: Path, lines: list[int] | None = None) -> np.ndarray:
    """Labels of a task's rows: class ids in the task's order, or finite STS-B scores in
    [0, 5]. A bad label fails with its file and line (``lines``: each row's line as an
    editor shows it; without them, rows are taken to follow the header one per line)."""
    raw = [r.get(task.label_column) for r in rows]
    if lines is None:
        first_line = 1 if task.columns else 2
        lines = [i + first_line for i in range(len(rows))]
    if task.labels is None:
        lo, hi = REGRESSION_RANGE
        out = np.empty(len(raw), dtype=np.float32)
        for i, v in enumerate(raw):
            try:
                x = float(v)
            except (TypeError, ValueError):
                x = None
            if x is None or not lo <= x <= hi:  # NaN and +/-inf fail the range too
                raise DataError(
                    f"{path} line {lines[i]}: label {v!r} in column '{task.label_column}' "
                    f"is not a number in [{lo:g}, {hi:g}], as task {task.name} needs"
                )
            out[i] = x
        return out
    index = {lab: k for k, lab in enumerate(task.labels)}
    out = np.empty(len(raw), dtype=np.int64)
    for i, v in enumerate(raw):
        if v not in index:
            raise DataError(
                f"{path} line {lines[i]}: label {v!r} in column '{task.label_column}' "
                f"is not one of task {task.name}'s labels ({', '.join(task.labels)})"
            )
        out[i] = index[v]
    return out


def _load_local(task: GlueTask, data_dir: str, split: str, labels: bool) -> GlueSplit:
    name = _split_file(task, split)
    folder = Path(data_dir).expanduser()
    if not folder.is_dir():
        raise DataError(f"GLUE data folder not found: {folder}")
    path = folder / task.folder / f"{name}.tsv"
    if not path.is_file():
        raise DataError(f"GLUE data file not found: {path} (task {task.name} expects {task.folder}/{name}.tsv)")
    # CoLA's test.tsv has a header (index, sentence); its train/dev files do not.
    rows, lines = read_glue_tsv_lines(path, task.columns if name != "test" else None)
    if not rows:
        raise DataError(f"{path} has no examples")
    missing = [c for c in task.text_columns if c not in rows[0]]
    if missing:
        raise DataError(f"{path} has no column '{missing[0]}' (task {task.name} needs {', '.join(task.text_columns)})")
    texts = [tuple(r[c] or "" for c in task.text_columns) for r in rows]
    y = None
    if labels:
        if task.label_column not in rows[0]:
            raise DataError(f"{path} has no label column '{task.label_column}'; the {name} split cannot be scored")
        y = _labels_from_tsv(task, rows, path, lines)
    return GlueSplit(task, name, texts, y, str(path))


def _load_hub(task: GlueTask, split: str, labels: bool) -> GlueSplit:
    name = _split_file(task, split)
    hub_split = {"dev": "validation", "dev_matched": "validation_matched",
                 "dev_mismatched": "validation_mismatched"}.get(name, name)
    try:
        import datasets

        ds = datasets.load_dataset("nyu-mll/glue", task.name, split=hub_split)
    except Exception as e:  # datasets raises many types when offline
        raise DataError(
            f"could not load GLUE task '{task.name}' from the hub ({type(e).__name__}); "
            f"give a data folder in the GLUE TSV layout (<dir>/{task.folder}/{name}.tsv)"
        ) from None
    texts = [tuple(ex[c] for c in task.hub_text_columns) for ex in ds]
    y = None
    if labels:
        y = np.asarray(ds["label"], dtype=np.float32 if task.is_regression else np.int64)
        if not task.is_regression and (y < 0).any():  # the hub's test splits carry -1
            raise DataError(f"the hub's {task.name} {name} split has no labels; it cannot be scored")
    return GlueSplit(task, name, texts, y, f"hub:nyu-mll/glue/{task.name}/{hub_split}")


def load_glue(task_name: str, data_dir: str | None, split: str, labels: bool = True) -> GlueSplit:
    """A GLUE split from a local folder in the TSV layout, or from the hub when no folder is given."""
    task = glue_task(task_name)
    if data_dir is not None:
        return _load_local(task, data_dir, split, labels)
    return _load_hub(task, split, labels)


def glue_texts(task_name: str, data_dir: str | None, split: str) -> list[tuple[str, ...]]:
    """Text fields (one or two per example) of a GLUE split, for calibration."""
    return load_glue(task_name, data_dir, split, labels=False).texts


def eval_splits(task_name: str, data_dir: str | None, split: str = "dev", limit: int | None = None,
                seed: int = 0) -> list[GlueSplit]:
    """The labelled splits a task is scored on: MNLI's dev means matched and mismatched."""
    task = glue_task(task_name)
    names = task.dev_splits if split in ("dev", "validation") else (split,)
    return [load_glue(task.name, data_dir, sp).subset(limit, seed) for sp in names]
