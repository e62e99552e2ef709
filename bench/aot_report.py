"""The static kernel report: every fused kernel compiled ahead of time for real GPU targets (no GPU
needed; kernels/fused/aot.py): registers, spills, shared memory, how many per-element loads are
128-bit, and the bytes each kernel moves per element against the minimum the op needs.

    python bench/aot_report.py                   # writes bench/results/aot/<triton version>.md
    python bench/aot_report.py --out report.md --arch 90

Run it without TRITON_INTERPRET=1 (the interpreter replaces @triton.jit).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def table(rows: list[dict], version: str) -> str:
    lines = [f"# Fused kernels compiled ahead of time (triton {version})", "",
             "Made by `python bench/aot_report.py` on a CPU-only machine with the ptxas the triton wheel ships. "
             "BLOCK 1024, 4 warps (what the dispatch launches on a GPU), pointers 16-byte aligned and N divisible "
             "by 16 (the JIT's specialisation for such launches). `vector loads`: per-element (masked) global loads "
             "that are 128-bit, of all of them. `B/elem`: bytes the kernel moves per element (loads + vector "
             "stores, from the PTX); `min`: what the op must read and write of its data tensors (the FC kernels "
             "also read the fp32 low-passed bias, an intermediate of the FFT).", "",
             "| kernel | variant | dtype | sm | registers | spills (st/ld B) | shared B | vector loads | B/elem | min |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| (all) | | | {r['arch']} | skipped: {r['skipped']} | | | | | |")
        elif "error" in r:
            lines.append(f"| {r['kernel']} | {r['variant']} | {r['dtype']} | {r['arch']} | **error**: {r['error'][:80]} "
                         "| | | | | |")
        else:
            need = "-" if r["min_bytes_per_element"] is None else f"{r['min_bytes_per_element']:g}"
            lines.append(f"| {r['kernel']} | {r['variant']} | {r['dtype']} | {r['arch']} | {r['registers']} | "
                         f"{r['spill_stores']}/{r['spill_loads']} | {r['shared_bytes']} | "
                         f"{r['vector_loads']}/{r['masked_loads']} | {r['bytes_per_element']:g} | {need} |")
    bad = [r for r in rows if "error" in r or r.get("spill_stores") or r.get("spill_loads")]
    lines += ["", f"{len([r for r in rows if 'registers' in r])} compiles, {len(bad)} with an error or spills."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", nargs="+", type=int, default=[80, 90, 100])
    p.add_argument("--out", help="markdown file (default bench/results/aot/<triton version>.md)")
    a = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("aot_report: unset TRITON_INTERPRET (the interpreter replaces @triton.jit)")
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    import triton
    from kernels.fused import aot
    rows = aot.check_all(a.arch)
    out = Path(a.out) if a.out else ROOT / "bench" / "results" / "aot" / f"triton-{triton.__version__}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table(rows, triton.__version__))
    print(f"wrote {out}")
    return 1 if any("error" in r or r.get("spill_stores") for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
