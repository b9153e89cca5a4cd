"""Layer-wise reconstruction after surgery: re-fit the output projections by ridge least squares.

Removing heads or neurons changes what each layer writes into the residual stream. Both
output projections (attention out, FFN out) are linear in their inputs, so their weights
and bias can be re-fit in closed form so that each layer's output again matches the
unpruned model's on calibration inputs.

Per sublayer the model computes the residual sum r = proj(x) + h (before BERT's post-norm;
GPT-2 and the pre-norm LLaMA family have no norm after it: r is the next norm's input or
the layer's output, as the ArchSpec's attn_residual_sum / ffn_residual_sum say). With u the unpruned and p the pruned model on the same tokens,
the pruned projection's target is T = r_u - h_p: the unpruned residual sum minus the pruned
model's own residual input, so the fitted projection makes the pruned residual sum equal the
unpruned one. With X = [x_p, 1] (the ones column carries the bias) and W~ = [W^T; b]:

    min ||X W~ - T||^2 + lambda ||W - W_0||^2,   lambda = ridge * mean(diag(x_p^T x_p))

i.e. (X^T X + lambda D) W~ = X^T T + lambda D W~_0 with D = diag(1, ..., 1, 0): the ridge
pulls the weights toward the pruned ones (W_0) and leaves the bias free. X^T X
([in+1, in+1]) and X^T T ([in+1, out]) are summed in float64 over the real (non-padding)
tokens of every batch, so memory is one layer's statistics, whatever the calibration size.

Order: layer l's attention projection, then layer l's FFN projection (its inputs depend on
the re-fit attention), then layer l+1, whose pruned inputs come from the already re-fit
layers, so errors do not pile up. A refit that makes the layer's output error (relative
squared error vs the unpruned layer output, on the calibration tokens) larger is undone,
so reconstruction never increases a layer's error over what it was before its own refit.

A layer left with no heads (or no neurons) has a zero-width projection: only the bias is
fit, and it becomes the mean target. A projection without bias (LLaMA's o_proj and
down_proj) is fit without the ones column, every weight under the ridge; with no inputs
left it has nothing to fit and is left as it is (no entry in the layer's fits).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .arch.base import Adapter, Layout, is_conv1d
from .data.calibration import Batch
from .errors import CompressorError
from .progress import bar
from .recipe import ReconstructConfig

# sublayer kind -> (adapter role of its output projection, ArchSpec field naming its residual sum)
SUBLAYERS = {"attention": ("attn_out", "attn_residual_sum"), "ffn": ("ffn_out", "ffn_residual_sum")}


@dataclass
class SublayerFit:
    kind: str  # "attention" | "ffn"
    inputs: int  # input features of the re-fit projection (0: only its bias is fit)
    error_before: float  # layer output error before this refit
    error_after: float  # ... after it (equal to error_before when the refit was undone)
    kept: bool  # False: the refit made the layer's output worse and was undone


@dataclass
class LayerFit:
    layer: int
    error_surgery: float  # the layer's output error in the model as surgery left it
    error_reconstructed: float  # ... in the reconstructed model
    fits: list[SublayerFit] = field(default_factory=list)


@dataclass
class ReconstructResult:
    layers: list[LayerFit]
    tokens: int
    sequences: int
    ridge: float
    kinds: str
    seconds: float

    def to_json(self) -> dict:
        return {
            "error": "relative squared error of each layer's output vs the unpruned model's, on the calibration tokens",
            "tokens": self.tokens,
            "sequences": self.sequences,
            "ridge": self.ridge,
            "kinds": self.kinds,
            "seconds": self.seconds,
            "layers": [asdict(lf) for lf in self.layers],
        }


# -- checks (before any work) ----------------------------------------------------------


def count_tokens(batches: Sequence[Batch]) -> int:
    return int(sum(int(b.attention_mask.sum()) for b in batches))


def required_tokens(layout: Layout, kinds: Sequence[str]) -> int:
    """Tokens the least squares needs: inputs of the widest re-fit projection, plus its bias."""
    widest = 0
    if "attention" in kinds:
        widest = max(widest, max(layout.heads_per_layer) * layout.head_dim)
    if "ffn" in kinds:
        widest = max(widest, max(layout.ffn_per_layer))
    return widest + 1


def check_tokens(layout: Layout, kinds: Sequence[str], batches: Sequence[Batch]) -> None:
    need, have = required_tokens(layout, kinds), count_tokens(batches)
    if have < need:
        raise CompressorError(
            f"reconstruct needs at least {need:,} calibration tokens (the widest re-fit projection has "
            f"{need - 1:,} inputs, plus its bias); the calibration has {have:,}: use more or longer sequences"
        )


def check_derived(pruned: Layout, reference: Layout) -> None:
    """The pruned model must be the reference with some heads/neurons removed."""
    if pruned.num_layers != reference.num_layers:
        raise CompressorError(f"reconstruct: the pruned model has {pruned.num_layers} layers, the reference "
                              f"{reference.num_layers}; the pruned model must derive from the reference")
    for what in ("hidden_size", "head_dim"):
        a, b = getattr(pruned, what), getattr(reference, what)
        if a != b:
            raise CompressorError(f"reconstruct: the pruned model's {what} is {a}, the reference's {b}; "
                                  f"the pruned model must derive from the reference")
    for what, unit in (("heads_per_layer", "heads"), ("ffn_per_layer", "FFN neurons")):
        for i, (a, b) in enumerate(zip(getattr(pruned, what), getattr(reference, what), strict=True)):
            if a > b:
                raise CompressorError(f"reconstruct: layer {i} of the pruned model has {a} {unit}, more than the "
                                      f"reference's {b}; the pruned model must derive from the reference")


def _check_spec(adapter: Adapter) -> None:
    spec = adapter.spec
    if spec.attn_residual_sum is None or spec.ffn_residual_sum is None:
        raise CompressorError(f"reconstruct does not support the {spec.name} architecture (its residual sums "
                              f"are not declared in compressor/arch)")


# -- capture ---------------------------------------------------------------------------


def _first(out):
    return out[0] if isinstance(out, tuple) else out


class _Tap:
    """Forward hooks on one layer that keep, for the last forward through it, each
    sublayer's projection input x and output y, its residual sum r, and the layer output."""

    def __init__(self, adapter: Adapter, layer: int) -> None:
        self.got: dict[str, torch.Tensor] = {}
        self.handles = []
        module = adapter.layers[layer]

        def keep(name, from_output):
            def hook(mod, args, output=None):
                self.got[name] = _first(output) if from_output else args[0]
            return hook

        for kind, (role, sum_field) in SUBLAYERS.items():
            proj = adapter.module(layer, role)
            self.handles.append(proj.register_forward_pre_hook(keep(f"{kind}.x", False)))
            self.handles.append(proj.register_forward_hook(keep(f"{kind}.y", True)))
            path = getattr(adapter.spec, sum_field)
            if path:
                self.handles.append(module.get_submodule(path).register_forward_pre_hook(keep(f"{kind}.r", False)))
            else:  # the residual sum is the layer's output
                self.handles.append(module.register_forward_hook(keep(f"{kind}.r", True)))
        self.handles.append(module.register_forward_hook(keep("out", True)))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@dataclass
class _Inputs:
    """What layer 0 is called with, per batch, so any layer can be re-run on its own."""

    hidden: list[torch.Tensor]  # per batch [batch, seq, hidden]: the current layer's input
    calls: list[list[tuple[tuple, dict]]]  # per batch, per layer: the other (args, kwargs)


def _trace(model: nn.Module, adapter: Adapter, batches: Sequence[Batch], masks: list[torch.Tensor],
           on_outputs) -> _Inputs:
    """One full forward per batch: records layer 0's input and every layer's call arguments
    (masks etc., shared tensors), and hands the layer outputs (real tokens) to ``on_outputs``."""
    n = len(adapter.layers)
    calls: list[tuple[tuple, dict]] = [None] * n  # type: ignore[list-item]
    outs: list[torch.Tensor] = [None] * n  # type: ignore[list-item]
    first: dict[str, torch.Tensor] = {}
    handles = []
    for i, layer in enumerate(adapter.layers):
        def pre(mod, args, kwargs, i=i):
            calls[i] = (tuple(args[1:]), dict(kwargs))
            if i == 0:
                first["hidden"] = args[0]
        handles.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(layer.register_forward_hook(lambda mod, args, out, i=i: outs.__setitem__(i, _first(out))))
    result = _Inputs([], [])
    device = next(model.parameters()).device
    try:
        for b, mask in zip(batches, masks, strict=True):
            types = getattr(b, "token_type_ids", None)  # sentence pairs: their segments, as at inference
            model(input_ids=b.input_ids.to(device), attention_mask=b.attention_mask.to(device),
                  **({"token_type_ids": types.to(device)} if types is not None else {}), **adapter.forward_kwargs())
            result.hidden.append(first["hidden"])
            result.calls.append(list(calls))
            on_outputs([o[mask] for o in outs])  # per layer [tokens, hidden]
    finally:
        for h in handles:
            h.remove()
    return result


# -- the fit ---------------------------------------------------------------------------


def _has_bias(proj: nn.Module) -> bool:
    # LLaMA-style o_proj / down_proj have none: they are fit without the ones column
    return getattr(proj, "bias", None) is not None


def _current(proj: nn.Module) -> torch.Tensor:
    # [in+1, out]: the weight as [in, out] with the bias as the last row ([in, out] without a bias)
    w = proj.weight.detach()
    w_in_out = w if is_conv1d(proj) else w.t()
    if not _has_bias(proj):
        return w_in_out.double()
    return torch.cat([w_in_out, proj.bias.detach()[None, :]]).double()


@torch.no_grad()
def _assign(proj: nn.Module, sol: torch.Tensor) -> None:
    biased = _has_bias(proj)
    w_in_out = sol[:-1] if biased else sol  # [in, out]
    proj.weight.copy_(w_in_out if is_conv1d(proj) else w_in_out.t())
    if biased:
        proj.bias.copy_(sol[-1])  # [out]


def solve_ridge(gram: torch.Tensor, cross: torch.Tensor, current: torch.Tensor, ridge: float,
                bias: bool = True) -> torch.Tensor:
    """argmin ||X W - T||^2 + lambda ||W[:-1] - current[:-1]||^2 from gram = X^T X
    ([in+1, in+1], last column the ones) and cross = X^T T ([in+1, out]); the bias row is
    not penalized. lambda = ridge * mean diagonal of the inputs' Gram. Returns [in+1, out].
    ``bias=False`` (a projection without bias): X has no ones column, every row is
    penalized, and the shapes are [in, in], [in, out]."""
    n_in = gram.shape[0] - (1 if bias else 0)
    lam = ridge * float(gram.diagonal()[:n_in].mean()) if n_in else 0.0
    pen = torch.full((gram.shape[0],), lam, dtype=gram.dtype)
    if bias:
        pen[-1] = 0.0
    lhs = gram + torch.diag(pen)
    rhs = cross + pen[:, None] * current
    if lam > 0:  # positive definite: the bias block is the token count, the rest X^T X + lam I
        chol, info = torch.linalg.cholesky_ex(lhs)
        if int(info) == 0:
            return torch.cholesky_solve(rhs, chol)
    # gelsd (SVD) also gives the minimum-norm answer when ridge 0 leaves lhs singular
    # (inputs that are constant or collinear on the calibration tokens)
    return torch.linalg.lstsq(lhs, rhs, driver="gelsd").solution


@torch.no_grad()
def reconstruct(
    pruned: nn.Module,
    original: nn.Module,
    adapter_pruned: Adapter,
    adapter_original: Adapter,
    batches: Sequence[Batch],
    cfg: ReconstructConfig,
    progress: bool = True,
) -> ReconstructResult:
    """Re-fit ``pruned``'s output projections in place so each layer's output matches
    ``original``'s (the unpruned reference) on the batches; see the module docstring."""
    start = time.perf_counter()
    kinds = cfg.sublayers
    _check_spec(adapter_pruned)
    layout = adapter_pruned.layout()
    check_derived(layout, adapter_original.layout())
    check_tokens(layout, kinds, batches)
    device = next(pruned.parameters()).device
    masks = [b.attention_mask.to(device).bool() for b in batches]  # per batch [batch, seq]
    modes = pruned.training, original.training
    pruned.eval()
    original.eval()
    n_layers = len(adapter_pruned.layers)

    # The current layer's inputs are cached for both models (per batch [batch, seq, hidden]:
    # calibration-sized, e.g. 256 x 128 x 384 floats = 50 MB each for MiniLM) and each layer
    # is re-run on its own with the call arguments recorded here. Re-running the whole model
    # per layer would cost O(layers^2) forwards; this is one layer forward per pass.
    ref_outs: list[list[torch.Tensor]] = []
    inputs_u = _trace(original, adapter_original, batches, masks, ref_outs.append)
    sq_err = torch.zeros(n_layers, dtype=torch.float64)
    sq_ref = torch.zeros(n_layers, dtype=torch.float64)
    it = iter(ref_outs)

    def surgery_error(outs):
        for i, (p, u) in enumerate(zip(outs, next(it), strict=True)):
            sq_err[i] += (p.double() - u.double()).pow(2).sum().cpu()
            sq_ref[i] += u.double().pow(2).sum().cpu()

    inputs_p = _trace(pruned, adapter_pruned, batches, masks, surgery_error)
    del ref_outs
    surgery = (sq_err / sq_ref.clamp_min(1e-300)).tolist()

    results: list[LayerFit] = []
    for layer in bar(range(n_layers), progress, desc="reconstruct", unit="layer"):
        ref, next_u = _reference_layer(original, adapter_original, layer, inputs_u, masks)

        def run(collect: Sequence[str], layer: int = layer, ref: list = ref):
            """One pass of the pruned layer: its output error, the Gram statistics of the
            ``collect`` sublayers, and its outputs (the next layer's inputs)."""
            return _pruned_pass(adapter_pruned, layer, inputs_p, masks, ref, collect)

        # each pass collects the statistics of the next sublayer only: the FFN's inputs
        # depend on the attention refit, so they are gathered after it is settled
        err, stats, outs = run(kinds[:1])
        fit = LayerFit(layer, surgery[layer], err)
        for k, kind in enumerate(kinds):
            proj = adapter_pruned.module(layer, SUBLAYERS[kind][0])
            nxt = kinds[k + 1 : k + 2]
            gram, cross = stats[kind]
            if gram.shape[0] == 0:
                # a projection without bias and without inputs (an emptied LLaMA sublayer
                # returns zeros): nothing to fit; the next sublayer's statistics still
                # need a pass (rare: a layer emptied of heads or neurons)
                if nxt:
                    _, stats, _ = run(nxt)
                continue
            old = _current(proj)
            biased = _has_bias(proj)
            _assign(proj, solve_ridge(gram, cross, old, cfg.ridge, bias=biased))
            new_err, new_stats, new_outs = run(nxt)
            kept = new_err <= err
            fit.fits.append(SublayerFit(kind, int(gram.shape[0]) - int(biased), err, new_err if kept else err, kept))
            if kept:
                err, outs, stats = new_err, new_outs, new_stats
            else:
                _assign(proj, old)  # back to the state the earlier pass measured (its error and outputs)
                if nxt:  # the next sublayer's statistics must see `old` (rare: one more pass)
                    _, stats, _ = run(nxt)
        fit.error_reconstructed = err
        results.append(fit)
        inputs_p.hidden, inputs_u.hidden = outs, next_u

    pruned.train(modes[0])
    original.train(modes[1])
    return ReconstructResult(results, count_tokens(batches), sum(int(b.input_ids.shape[0]) for b in batches),
                             cfg.ridge, cfg.kinds, time.perf_counter() - start)


def _reference_layer(model, adapter, layer, inputs: _Inputs, masks):
    """The unpruned layer on its cached inputs: per batch its residual sums and output on
    the real tokens ([tokens, hidden] each), and its full outputs for the next layer."""
    tap = _Tap(adapter, layer)
    ref, nxt = [], []
    try:
        for b, mask in enumerate(masks):
            args, kwargs = inputs.calls[b][layer]
            out = _first(adapter.layers[layer](inputs.hidden[b], *args, **kwargs))
            nxt.append(out)
            ref.append({k: tap.got[k][mask] for k in ("attention.r", "ffn.r", "out")})
    finally:
        tap.remove()
    return ref, nxt


def _pruned_pass(adapter, layer, inputs: _Inputs, masks, ref, collect: Sequence[str]):
    tap = _Tap(adapter, layer)
    biased = {kind: _has_bias(adapter.module(layer, SUBLAYERS[kind][0])) for kind in collect}
    stats = {}
    sq_err = sq_ref = 0.0
    outs = []
    try:
        for b, mask in enumerate(masks):
            args, kwargs = inputs.calls[b][layer]
            out = _first(adapter.layers[layer](inputs.hidden[b], *args, **kwargs))
            outs.append(out)
            u = ref[b]
            p_out = out[mask].double()
            sq_err += float((p_out - u["out"].double()).pow(2).sum())
            sq_ref += float(u["out"].double().pow(2).sum())
            for kind in collect:
                x = tap.got[f"{kind}.x"][mask].double()  # [tokens, in]
                # target T = r_u - h_p with h_p = r_p - y_p: [tokens, out]
                target = u[f"{kind}.r"].double() - tap.got[f"{kind}.r"][mask].double() + tap.got[f"{kind}.y"][mask].double()
                if biased[kind]:
                    xa = torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)  # [tokens, in+1]
                else:
                    xa = x  # no bias to fit: [tokens, in]
                gram, cross = stats.get(kind, (0.0, 0.0))
                stats[kind] = (gram + (xa.t() @ xa).cpu(), cross + (xa.t() @ target).cpu())
    finally:
        tap.remove()
    return sq_err / max(sq_ref, 1e-300), stats, outs
