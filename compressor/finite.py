"""Every saved model is checked finite before it is written: a NaN or infinite weight
(a diverged fine-tune, a reconstruct fit on degenerate inputs, an input model that
already had one) would otherwise be saved, reload fine and score nonsense."""

from __future__ import annotations

import torch
from torch import nn

from .errors import CompressorError


@torch.no_grad()
def check_finite(model: nn.Module, what: str = "the model") -> None:
    """Raise a one-line ``CompressorError`` when any floating-point weight or buffer of
    ``model`` is NaN or infinite; call it before anything is written."""
    bad = [name for name, t in model.state_dict().items()
           if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all())]
    if bad:
        raise CompressorError(f"{what} has NaN or infinite weights in {len(bad)} tensor(s) (first: {bad[0]}); "
                              f"nothing was written")


def check_loss(loss: float, step: int, steps: int) -> None:
    """A fine-tuning loss that is not finite stops the run: nothing after it can be
    trusted, and nothing is saved."""
    if not torch.isfinite(torch.tensor(loss)):
        raise CompressorError(f"fine-tuning stopped at step {step} of {steps}: the loss is {loss} (not finite); "
                              f"nothing was saved (a lower lr, temperature or diversity, or finite labels, may help)")
