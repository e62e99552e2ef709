"""Configs as files: YAML read strictly (a syntax error, a tab or a key written twice is one error with
its line and column), `base:` chains merged section by section, `--set key=value` overrides, and the
resolved config written back (atomically)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from rfengine.config.schema import Config, ConfigError
from rfengine.config.validate import from_dict, to_dict


def parse_override(text: str) -> tuple[list[str], Any]:
    """`section.key=value` -> (['section', 'key'], parsed value)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if len(path) < 2 or not all(path):
        raise ConfigError(f"--set {text!r}: the key must be dotted, like train.steps")
    return path, yaml.safe_load(raw) if raw.strip() else ""


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `--set` overrides to a nested dict (validation happens in `from_dict`)."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text!r}: {part!r} is a value, not a section")
            node = child
        node[path[-1]] = value
    return data


class _StrictLoader(yaml.SafeLoader):
    """YAML that refuses a key written twice in one mapping (plain YAML keeps the last one silently)."""


def _mapping(loader, node, deep=False):
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            mark = key_node.start_mark
            raise ConfigError(f"{mark.name}:{mark.line + 1}:{mark.column + 1}: duplicated key {key!r} "
                              f"(first at line {seen[key] + 1}); write each key once")
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def read_yaml(path: Path) -> dict:
    """One YAML file as a dict; a syntax error, a tab or a duplicated key is one ConfigError line
    with the file, line and column."""
    try:
        with open(path) as f:  # a file stream: YAML's marks (and so the messages) name the file
            data = yaml.load(f, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        lines = path.read_text().splitlines()
        tab = mark is not None and mark.line < len(lines) and "\t" in lines[mark.line]
        raise ConfigError(f"{where}: invalid YAML: {e.problem or e.context}"
                          + (" (a tab: YAML indents with spaces only)" if tab else "")) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections, got {type(data).__name__}")
    return data


def merge(base: dict, over: dict) -> dict:
    """`over` on top of `base`: sections merge key by key, values replace."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def compose(path: str | Path, chain: tuple = ()) -> dict:
    """A config file resolved through its `base:` (a path relative to the file that names it, itself
    possibly based on another): the base's settings with this file's on top."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}" + (f" (the base of {chain[-1]})" if chain else ""))
    if p.resolve() in chain:
        raise ConfigError(f"{p}: circular base: {' -> '.join(str(c) for c in (*chain, p.resolve()))}")
    data = read_yaml(p)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{p}: base: expected the path of another config file, got {base!r}")
    return merge(compose(p.parent / base, (*chain, p.resolve())), data)


def load(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a YAML config (resolving `base:`), or start from defaults; apply overrides; validate."""
    data = compose(path) if path is not None else {}
    return from_dict(apply_overrides(data, list(overrides)))


def save(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically (complete or not at all)."""
    from rfengine.storage import write_atomic
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    write_atomic(path, lambda tmp: Path(tmp).write_text(text))
