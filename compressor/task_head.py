"""Classification and regression heads for GLUE tasks on (pruned) encoders."""

from __future__ import annotations

import copy
import logging

from torch import nn

from .arch.base import adapter_for
from .data.glue import GlueTask
from .errors import CompressorError
from .models import shape_to_layout

log = logging.getLogger("compressor")


def head_labels(model: nn.Module) -> int | None:
    """Number of outputs of the model's sequence-classification head; None without one."""
    if not type(model).__name__.endswith("ForSequenceClassification"):
        return None
    return int(model.config.num_labels)


def check_head(model: nn.Module, task: GlueTask, what: str = "the model") -> None:
    """A model can be scored on a task only with a head of the task's width."""
    n = head_labels(model)
    if n is None:
        raise CompressorError(
            f"{what} ({type(model).__name__}) has no classification head, so it cannot be scored on "
            f"{task.name}; fine-tune it first (compress finetune --task {task.name}, or a recipe's finetune stage)"
        )
    if n != task.num_labels:
        raise CompressorError(
            f"{what} has a head with {n} output(s); task {task.name} needs {task.num_labels}"
            f" ({'a regression score' if task.is_regression else ', '.join(task.labels)})"
        )


def name_labels(config, task: GlueTask) -> None:
    """config.id2label / label2id from the task's class names (sst2: negative, positive),
    so a saved classifier says what its outputs mean; regression keeps transformers' default."""
    from .data.glue import label_names

    names = label_names(task)
    if names is None:
        return
    config.id2label = dict(enumerate(names))
    config.label2id = {n: i for i, n in enumerate(names)}


def with_task_head(model: nn.Module, task: GlueTask, attn_implementation: str | None = None) -> nn.Module:
    """The model with a freshly initialized head for the task; the encoder's weights and
    its (possibly pruned) layout are kept. A model whose head already fits is returned as
    is. Either way its config names the task's labels (id2label)."""
    if head_labels(model) == task.num_labels:
        name_labels(model.config, task)
        return model
    from transformers import AutoModelForSequenceClassification

    if head_labels(model) is not None:
        log.info("replacing the model's %d-way head with a new %d-way head for %s",
                 head_labels(model), task.num_labels, task.name)
    config = copy.deepcopy(model.config)
    config.num_labels = task.num_labels
    name_labels(config, task)
    config.problem_type = "regression" if task.is_regression else "single_label_classification"
    config.architectures = None
    if adapter_for(model).spec.pad_token_from_eos and config.pad_token_id is None:
        # a decoder classifies from the last non-pad token; it must know which id pads
        config.pad_token_id = config.eos_token_id
    kwargs = {"attn_implementation": attn_implementation or model.config._attn_implementation}
    try:
        new = AutoModelForSequenceClassification.from_config(config, **kwargs)
    except ValueError as e:
        raise CompressorError(f"no sequence-classification head for {config.model_type}: {e}") from None
    shape_to_layout(new, adapter_for(model).layout())
    missing, unexpected = new.base_model.load_state_dict(model.base_model.state_dict(), strict=False)
    # A sentence encoder saved without BERT's pooler leaves it freshly initialized, as
    # transformers does when it loads such a checkpoint into a classifier.
    missing = [k for k in missing if not k.startswith("pooler.")]
    if missing or unexpected:
        raise CompressorError(f"encoder weights do not fit the new head's model (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]})")
    new.to(next(model.parameters()).device)
    return new.train(model.training)


def lm_head_problem(model: nn.Module) -> str | None:
    """Why ``model`` cannot predict the next token (None when it can): an encoder (not
    causal), or a decoder without a language-model head (no logits over the vocabulary)."""
    spec = adapter_for(model).spec
    name = type(model).__name__
    if not spec.causal:
        return f"{name} ({spec.name}) is an encoder: it attends both ways and has no next-token predictions"
    if head_labels(model) is not None:
        return f"{name} is a sequence classifier: its head predicts {head_labels(model)} label(s), not the next token"
    get = getattr(model, "get_output_embeddings", None)
    if get is None or get() is None:
        return f"{name} ({spec.name}) has no language-model head (no logits over the vocabulary)"
    return None


def check_causal_lm(model: nn.Module, why: str = "perplexity needs a causal language model") -> None:
    """One line when ``model`` is not a causal language model with an LM head."""
    problem = lm_head_problem(model)
    if problem is not None:
        raise CompressorError(f"{why}; {problem}")
