"""Every torch API the engine names exists in the installed torch: the dotted `torch.*` names and
`from torch... import ...` imports found in rfengine/, kernels/ and bench/ are resolved one by one.
The GPU machines run an older torch (2.11) than CI; bench/gpu_all.sh runs this first there.

    python bench/api_check.py          # exit 1 and the missing names if any
"""
from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def names(paths) -> dict[str, str]:
    """dotted torch name -> first place it is used."""
    found = {}
    for path in paths:
        path = Path(path).resolve()
        here = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        tree = ast.parse(path.read_text(), str(path))
        # names bound to torch modules in this file: `import torch.distributed as dist`, `from torch import nn`
        roots = {"torch": "torch"}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "torch" and alias.asname:
                        roots[alias.asname] = alias.name
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "torch":
                for alias in node.names:
                    roots.setdefault(alias.asname or alias.name, f"{node.module}.{alias.name}")
        for node in ast.walk(tree):
            dotted = None
            if isinstance(node, ast.Attribute):
                parts, cur = [], node
                while isinstance(cur, ast.Attribute):
                    parts.append(cur.attr)
                    cur = cur.value
                if isinstance(cur, ast.Name) and cur.id in roots:
                    dotted = ".".join([roots[cur.id], *reversed(parts)])
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "torch":
                for alias in node.names:
                    found.setdefault(f"{node.module}.{alias.name}", f"{here}:{node.lineno}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "torch":
                        found.setdefault(alias.name, f"{here}:{node.lineno}")
            if dotted:
                found.setdefault(dotted, f"{here}:{node.lineno}")
    return found


def resolves(dotted: str) -> bool:
    """Import the longest module prefix, then getattr the rest (a shorter prefix of a longer chain
    such as `torch.cuda.get_device_name` resolves on its own)."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for p in parts[i:]:
                obj = getattr(obj, p)
            return True
        except AttributeError:
            return False
    return False


def main() -> int:
    import torch
    files = [p for d in ("rfengine", "kernels", "bench") for p in sorted((ROOT / d).rglob("*.py"))]
    found = names(files)
    # attribute chains on tensors' methods are not module names: keep chains that start like a module path
    missing = {n: where for n, where in sorted(found.items()) if not resolves(n)}
    print(f"torch {torch.__version__}: {len(found)} torch names used, {len(missing)} missing")
    for n, where in missing.items():
        print(f"  missing: {n} ({where})")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
