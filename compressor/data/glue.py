"""GLUE tasks: folder names and text columns of the original TSV layout."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from ..errors import CompressorError


@dataclass(frozen=True)
class GlueTask:
    name: str
    folder: str
    text_columns: tuple[str, ...]
    label_column: str
    hub_name: str
    hub_text_columns: tuple[str, ...]


GLUE_TASKS = {
    t.name: t
    for t in (
        GlueTask("cola", "CoLA", ("sentence",), "label", "cola", ("sentence",)),
        GlueTask("sst2", "SST-2", ("sentence",), "label", "sst2", ("sentence",)),
        GlueTask("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", "mrpc", ("sentence1", "sentence2")),
        GlueTask("stsb", "STS-B", ("sentence1", "sentence2"), "score", "stsb", ("sentence1", "sentence2")),
        GlueTask("qqp", "QQP", ("question1", "question2"), "is_duplicate", "qqp", ("question1", "question2")),
        GlueTask("mnli", "MNLI", ("sentence1", "sentence2"), "gold_label", "mnli", ("premise", "hypothesis")),
        GlueTask("qnli", "QNLI", ("question", "sentence"), "label", "qnli", ("question", "sentence")),
        GlueTask("rte", "RTE", ("sentence1", "sentence2"), "label", "rte", ("sentence1", "sentence2")),
        GlueTask("wnli", "WNLI", ("sentence1", "sentence2"), "label", "wnli", ("sentence1", "sentence2")),
    )
}


def glue_task(name: str) -> GlueTask:
    key = name.lower().replace("-", "")
    if key not in GLUE_TASKS:
        raise CompressorError(f"unknown GLUE task '{name}'; valid: {', '.join(GLUE_TASKS)}")
    return GLUE_TASKS[key]


def read_glue_tsv(path: Path) -> list[dict[str, str]]:
    """Rows of a GLUE TSV. MRPC starts with a byte-order mark and has bare quote
    characters inside sentences, so quoting is off and the BOM is stripped."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def glue_texts(task_name: str, data_dir: str | None, split: str) -> list[tuple[str, ...]]:
    """Text fields (one or two per example) of a GLUE split, from a local folder or the hub."""
    task = glue_task(task_name)
    split_file = {"validation": "dev", "dev": "dev", "train": "train", "test": "test"}[split]
    if data_dir is not None:
        path = Path(data_dir).expanduser() / task.folder / f"{split_file}.tsv"
        if not path.is_file():
            raise CompressorError(f"GLUE data file not found: {path}")
        rows = read_glue_tsv(path)
        missing = [c for c in task.text_columns if rows and c not in rows[0]]
        if missing:
            raise CompressorError(f"{path} has no column '{missing[0]}' (expected {', '.join(task.text_columns)})")
        return [tuple(r[c] for c in task.text_columns) for r in rows]
    try:
        import datasets

        hub_split = "validation" if split_file == "dev" else split_file
        ds = datasets.load_dataset("nyu-mll/glue", task.hub_name, split=hub_split)
    except Exception as e:  # datasets raises many types when offline
        raise CompressorError(
            f"could not load GLUE task '{task.name}' from the hub ({type(e).__name__}); "
            f"give calibration.data_dir, a folder in the GLUE TSV layout"
        ) from None
    return [tuple(ex[c] for c in task.hub_text_columns) for ex in ds]
