"""Reading input files a user hands us, strictly: every failure is one line naming the file.

Imports neither torch nor transformers, so the command line can check inputs before
either loads. Covers text that is not UTF-8, YAML that could blow up (duplicate keys,
anchors and aliases, absurd nesting or size), JSON that is truncated or garbled, and
safetensors files whose header or length do not add up (a truncated download or copy).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from .errors import CompressorError, ModelLoadError

MAX_YAML_BYTES = 1 << 20  # recipes are a few hundred bytes; 1 MiB is far beyond any real one
MAX_YAML_DEPTH = 32
MAX_SAFETENSORS_HEADER = 100 << 20  # the format's own limit


def read_text(path: str | Path, what: str, error: type[CompressorError] = CompressorError) -> str:
    """The file's text, decoded as UTF-8 (a leading BOM is dropped)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise error(f"{what} not found: {p}") from None
    except IsADirectoryError:
        raise error(f"{what} {p} is a folder, not a file") from None
    except OSError as e:
        raise error(f"{what} {p} cannot be read: {e.strerror or e}") from None
    return decode_utf8(data, p, what, error)


def decode_utf8(data: bytes, path: Path, what: str, error: type[CompressorError] = CompressorError) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise error(f"{what} {path} is not UTF-8 text (byte {e.start}, line {line}); save it as UTF-8") from None
    return text[1:] if text.startswith("\ufeff") else text


def load_json(path: str | Path, what: str, error: type[CompressorError] = CompressorError,
              unique_keys: bool = False):
    """Parse a JSON file; ``unique_keys`` refuses an object that names a key twice."""
    p = Path(path)
    text = read_text(p, what, error)
    if not text.strip():
        raise error(f"{what} {p} is empty")

    def pairs(items):
        seen = set()
        for k, _ in items:
            if k in seen:
                raise error(f"{what} {p} names the key '{k}' twice")
            seen.add(k)
        return dict(items)

    try:
        return json.loads(text, object_pairs_hook=pairs if unique_keys else None)
    except json.JSONDecodeError as e:
        raise error(f"{what} {p} is not valid JSON (truncated or garbled?): {e.msg} at line {e.lineno}") from None
    except RecursionError:
        raise error(f"{what} {p} is nested too deeply") from None


# --- YAML ------------------------------------------------------------------------------


def _strict_loader(path: Path, what: str, error: type[CompressorError]):
    import yaml

    def fail(message: str, node_or_event=None):
        mark = getattr(node_or_event, "start_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise error(f"{what} {path}{where}: {message}")

    class StrictLoader(yaml.SafeLoader):
        """SafeLoader without anchors/aliases (billion-laughs), duplicate keys or deep nesting."""

        depth = 0

        def compose_node(self, parent, index):
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent):
                fail(f"uses the alias '*{event.anchor}'; anchors and aliases are not allowed", event)
            if getattr(event, "anchor", None) is not None:
                fail(f"defines the anchor '&{event.anchor}'; anchors and aliases are not allowed", event)
            self.depth += 1
            if self.depth > MAX_YAML_DEPTH:
                fail(f"is nested more than {MAX_YAML_DEPTH} levels deep", event)
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen = set()
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        fail("uses a '<<' merge key; it is not allowed", key_node)
                    key = self.construct_object(key_node, deep=True)
                    try:
                        dup = key in seen
                        seen.add(key)
                    except TypeError:  # an unhashable key: SafeLoader reports it
                        break
                    if dup:
                        fail(f"names the key '{key}' twice", key_node)
            return super().construct_mapping(node, deep=deep)

    return StrictLoader


def load_yaml(path: str | Path, what: str, error: type[CompressorError] = CompressorError):
    """Parse a small YAML file strictly (see ``_strict_loader``); None for an empty file."""
    import yaml

    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError:
        size = 0
    if size > MAX_YAML_BYTES:
        raise error(f"{what} {p} is {size:,} bytes; the limit is {MAX_YAML_BYTES:,}")
    text = read_text(p, what, error)
    try:
        return yaml.load(text, Loader=_strict_loader(p, what, error))  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise error(f"{what} {p} is not valid YAML{where}: {problem}") from None
    except RecursionError:
        raise error(f"{what} {p} is nested too deeply") from None


# --- model folders ---------------------------------------------------------------------


def check_safetensors(path: str | Path) -> None:
    """The header parses and the file is exactly as long as the header says (catches a
    truncated or garbled file before a loader turns it into a traceback)."""
    p = Path(path)
    bad = f"weights file {p} is corrupted or truncated"
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ModelLoadError(f"{bad} ({size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_SAFETENSORS_HEADER or 8 + n > size:
                raise ModelLoadError(f"{bad} (header of {n:,} bytes in a file of {size:,})")
            header = json.loads(f.read(n).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelLoadError(f"{bad} (unreadable header)") from None
    except OSError as e:
        raise ModelLoadError(f"weights file {p} cannot be read: {e.strerror or e}") from None
    if not isinstance(header, dict):
        raise ModelLoadError(f"{bad} (unreadable header)")
    end = 0
    for name, t in header.items():
        if name == "__metadata__":
            continue
        offs = t.get("data_offsets") if isinstance(t, dict) else None
        if not (isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) for o in offs)
                and 0 <= offs[0] <= offs[1]):
            raise ModelLoadError(f"{bad} (tensor '{name}' has no valid offsets)")
        end = max(end, offs[1])
    if 8 + n + end != size:
        raise ModelLoadError(f"{bad} ({size:,} bytes, the header describes {8 + n + end:,})")


def check_model_folder(folder: str | Path) -> dict:
    """Check a local model folder's files without loading them; returns config.json.

    config.json must be a JSON object; every other top-level JSON file (tokenizer,
    generation config, ...) must parse; every safetensors file must be whole; a WordPiece
    vocabulary must be UTF-8.
    """
    d = Path(folder)
    config = load_json(d / "config.json", "model config", ModelLoadError)
    if not isinstance(config, dict):
        raise ModelLoadError(f"model config {d / 'config.json'} is not a JSON object")
    for f in sorted(d.glob("*.json")):
        if f.name != "config.json" and f.is_file():
            load_json(f, "model file", ModelLoadError)
    for f in sorted(d.glob("*.safetensors")):
        check_safetensors(f)
    for name in ("vocab.txt", "merges.txt"):
        if (d / name).is_file():
            read_text(d / name, "tokenizer file", ModelLoadError)
    return config
