"""Fine-tuning on a GLUE task, with optional logit distillation from a teacher.

The loop runs through ``accelerate``: on CPU here, on a GPU when one is present, and
on several GPUs under ``accelerate launch`` with no change (the data loader is sharded
and gradients are all-reduced by ``Accelerator.prepare``).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from .progress import bar as progress_bar

from .arch.base import adapter_for, check_max_length
from .data.glue import GlueSplit
from .errors import CompressorError
from .evaluate.glue import encode
from .finite import check_loss
from .recipe import FinetuneConfig
from .task_head import check_head, with_task_head
from .topology.heads import within_layer_diversity


@dataclass
class FinetuneResult:
    steps: int
    examples_seen: int
    seconds: float
    final_loss: float  # mean over the last 10% of steps (task + distillation terms)
    distilled: bool
    diversity: float | None = None  # mean within-layer head distance over the last 10% of steps

    def to_json(self) -> dict:
        return asdict(self)


def total_steps(cfg: FinetuneConfig, examples: int) -> int:
    if cfg.max_steps is not None:
        return cfg.max_steps
    return max(1, math.ceil((cfg.epochs or 1.0) * examples / cfg.batch_size))


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, alpha: float,
                      temperature: float, regression: bool) -> torch.Tensor:
    """(1 - alpha) * task loss + alpha * KD loss (Hinton et al. 2015).

    student, teacher: [batch, labels] logits. Classification distills the softened
    distributions with KL(teacher || student), scaled by T^2 so its gradients keep their
    size as T changes; regression matches the teacher's scores by squared error.
    """
    if regression:
        task = F.mse_loss(student.squeeze(-1), labels.float())
        kd = F.mse_loss(student, teacher)
    else:
        task = F.cross_entropy(student, labels)
        t = temperature
        kd = F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), log_target=True,
                      reduction="batchmean") * t * t
    return (1 - alpha) * task + alpha * kd


def finetune(model: nn.Module, tokenizer, data: GlueSplit, cfg: FinetuneConfig, max_length: int | None = None,
             teacher: nn.Module | None = None, progress: bool = True) -> tuple[nn.Module, FinetuneResult]:
    """Train the model (given a task head when it has none) on a labelled split.

    Like transformers' Trainer, this updates the model's weights in place; pass a copy to
    keep the original (a teacher must not be the model being trained). Returns the trained
    model (a new object when a head was added) in eval mode.
    """
    from accelerate import Accelerator
    from transformers import get_linear_schedule_with_warmup

    task = data.task
    if data.labels is None:
        raise CompressorError(f"{data.source} has no labels; fine-tuning needs a labelled split")
    if cfg.distill is not None:
        if teacher is None:
            raise CompressorError("distillation needs a teacher model")
        check_head(teacher, task, "the distillation teacher")
        if teacher is model:
            raise CompressorError("the distillation teacher cannot be the model being trained; pass a copy")
    max_length = check_max_length(model.config, max_length, "max_length")
    model = with_task_head(model, task)
    torch.manual_seed(cfg.seed)
    acc = Accelerator()
    steps = total_steps(cfg, len(data))

    labels = torch.from_numpy(data.labels)
    loader = torch.utils.data.DataLoader(
        range(len(data)), batch_size=cfg.batch_size, shuffle=True, drop_last=len(data) > cfg.batch_size,
        generator=torch.Generator().manual_seed(cfg.seed),
        collate_fn=lambda idx: (encode(tokenizer, [data.texts[i] for i in idx], max_length), labels[idx]),
    )
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "LayerNorm" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim > 1 and "LayerNorm" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    # Under `accelerate launch` the prepared scheduler steps once per process per step.
    n = acc.num_processes
    sched = get_linear_schedule_with_warmup(opt, int(cfg.warmup_ratio * steps) * n, steps * n)
    model, opt, loader, sched = acc.prepare(model, opt, loader, sched)
    if teacher is not None and cfg.distill is not None:
        teacher = teacher.to(acc.device).eval()
    fwd = adapter_for(acc.unwrap_model(model)).forward_kwargs()

    if cfg.diversity > 0 and getattr(acc.unwrap_model(model).config, "_attn_implementation", "eager") != "eager":
        raise CompressorError("the diversity term needs attention maps: load the model with attn_implementation='eager'")
    model.train()
    losses: list[float] = []
    spread: list[float] = []
    seen = 0
    start = time.perf_counter()
    bar = progress_bar(total=steps, progress=progress and acc.is_local_main_process, desc=f"fine-tune {task.name}")
    while len(losses) < steps:
        for enc, y in loader:
            out = model(**enc, **fwd, output_attentions=cfg.diversity > 0)
            logits = out.logits  # [batch, labels]
            if cfg.distill is not None:
                with torch.no_grad():
                    t_logits = teacher(**enc, **fwd).logits
                loss = distillation_loss(logits, t_logits, y, cfg.distill.alpha, cfg.distill.temperature,
                                         task.is_regression)
            elif task.is_regression:
                loss = F.mse_loss(logits.squeeze(-1), y.float())
            else:
                loss = F.cross_entropy(logits, y)
            losses.append(loss.item())
            check_loss(losses[-1], len(losses), steps)
            if cfg.diversity > 0:
                div = within_layer_diversity(out.attentions, enc["attention_mask"])
                spread.append(div.item())
                loss = loss - cfg.diversity * div
                check_loss(loss.item(), len(losses), steps)
            acc.backward(loss)
            acc.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            seen += len(y) * acc.num_processes
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if len(losses) >= steps:
                break
    bar.close()
    acc.wait_for_everyone()
    model = acc.unwrap_model(model).eval()
    tail = losses[-max(1, steps // 10):]
    div_tail = spread[-max(1, steps // 10):] if spread else None
    return model, FinetuneResult(steps, seen, time.perf_counter() - start, float(sum(tail) / len(tail)),
                                 cfg.distill is not None, None if div_tail is None else float(sum(div_tail) / len(div_tail)))
