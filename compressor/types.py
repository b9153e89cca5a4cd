"""The data that flows between pipeline stages. All of it round-trips through JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from typing import TYPE_CHECKING

from .errors import PlanError

if TYPE_CHECKING:  # the architectures import torch; a plan is read without it
    from .arch.base import Layout


@dataclass(frozen=True)
class HeadScores:
    """One score per head (higher = keep). ``values[l]`` has one entry per head of layer l."""

    scorer: str
    values: tuple[tuple[float, ...], ...]
    extras: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"scorer": self.scorer, "kind": "heads", "values": [list(v) for v in self.values]}


@dataclass(frozen=True)
class NeuronScores:
    """One score per FFN neuron (higher = keep); layers may differ in size."""

    scorer: str
    values: tuple[np.ndarray, ...]  # per layer: [neurons]
    extras: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"scorer": self.scorer, "kind": "neurons", "values": [v.tolist() for v in self.values]}


@dataclass
class Scores:
    """What one scorer produced: head scores, neuron scores, or both."""

    heads: HeadScores | None = None
    neurons: NeuronScores | None = None


@dataclass(frozen=True)
class PruningPlan:
    """Which heads and FFN neurons to remove, per layer, and who chose them.

    Indices refer to the model the plan is applied to. An empty plan is valid and
    leaves the model unchanged.
    """

    heads: dict[int, tuple[int, ...]] = field(default_factory=dict)
    neurons: dict[int, tuple[int, ...]] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, heads=None, neurons=None, source=None) -> "PruningPlan":
        def norm(d):
            return {int(k): tuple(sorted(int(i) for i in v)) for k, v in (d or {}).items() if len(v)}

        return cls(norm(heads), norm(neurons), dict(source or {}))

    @property
    def is_empty(self) -> bool:
        return not self.heads and not self.neurons

    def validate(self, layout: Layout) -> None:
        for kind, table, sizes in (
            ("head", self.heads, layout.heads_per_layer),
            ("neuron", self.neurons, layout.ffn_per_layer),
        ):
            for layer, idx in table.items():
                if not 0 <= layer < layout.num_layers:
                    raise PlanError(
                        f"plan names layer {layer}, but the model has {layout.num_layers} layers "
                        f"(valid: 0..{layout.num_layers - 1})"
                    )
                if len(set(idx)) != len(idx):
                    raise PlanError(f"plan lists a {kind} of layer {layer} twice")
                bad = [i for i in idx if not 0 <= i < sizes[layer]]
                if bad:
                    raise PlanError(
                        f"plan removes {kind} {bad[0]} of layer {layer}, but layer {layer} has "
                        f"{sizes[layer]} {kind}s (valid: 0..{sizes[layer] - 1})"
                    )
        g = layout.group_size
        if g > 1:
            # grouped-query attention: a key/value head goes with all of its query heads
            for layer, idx in self.heads.items():
                removed = set(idx)
                for group in sorted({h // g for h in removed}):
                    members = range(group * g, (group + 1) * g)
                    if not removed.issuperset(members):
                        raise PlanError(
                            f"plan removes some but not all query heads of key/value group {group} in layer "
                            f"{layer} (heads {members.start}..{members.stop - 1}); with {g} query heads per "
                            f"key/value head only whole groups can be removed"
                        )

    def kept_layout(self, layout: Layout) -> Layout:
        from .arch.base import Layout

        return Layout(
            tuple(h - len(self.heads.get(i, ())) for i, h in enumerate(layout.heads_per_layer)),
            tuple(f - len(self.neurons.get(i, ())) for i, f in enumerate(layout.ffn_per_layer)),
            layout.head_dim,
            layout.hidden_size,
            layout.group_size,
            layout.ffn_inputs,
        )

    def to_json(self) -> dict:
        return {
            "format": "compressor.plan/1",
            "heads": {str(k): list(v) for k, v in sorted(self.heads.items())},
            "neurons": {str(k): list(v) for k, v in sorted(self.neurons.items())},
            "source": self.source,
        }

    @classmethod
    def from_json(cls, d: Any) -> "PruningPlan":
        if not isinstance(d, dict) or d.get("format") != "compressor.plan/1":
            raise PlanError("not a compressor plan: expected a JSON object with \"format\": \"compressor.plan/1\"")
        unknown = set(d) - {"format", "heads", "neurons", "source"}
        if unknown:
            raise PlanError(f"unknown plan key '{sorted(unknown)[0]}'; allowed: format, heads, neurons, source")
        for key in ("heads", "neurons"):
            table = d.get(key, {})
            if not isinstance(table, dict):
                raise PlanError(f"plan field '{key}' must map layer numbers to lists of indices")
            for layer, idx in table.items():
                if not str(layer).lstrip("-").isdigit():
                    raise PlanError(f"plan field '{key}' has layer key '{layer}'; layer keys must be integers")
                if not isinstance(idx, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in idx):
                    raise PlanError(f"plan field '{key}.{layer}' must be a list of integers")
        return cls.build(d.get("heads"), d.get("neurons"), d.get("source"))

    def save(self, path: str | Path) -> None:
        from .outputs import write_json_atomic

        write_json_atomic(Path(path), self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "PruningPlan":
        p = Path(path)
        if not p.is_file():
            raise PlanError(f"plan file not found: {p}")
        from .files import load_json

        # UTF-8, not empty, valid JSON, no key named twice: else one line naming the file
        data = load_json(p, "plan file", PlanError, unique_keys=True)
        try:
            return cls.from_json(data)
        except PlanError as e:
            raise PlanError(f"plan file {p}: {e}") from None
