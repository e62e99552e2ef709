"""Paired statistics of the equal-compute study: per seed the log ratio of a variant's FD to FM's
on the same seed (same pretrained model, data order and sampling noise), their mean and 95%
t-interval over seeds, the choice of a variant on the selection seeds, and its confirmation."""
from __future__ import annotations

import math

import numpy as np

SELECT_AT = 20  # the sampling budget (Euler steps) the choice is made at, fixed before any result


def t_interval(values, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of the two-sided t-interval; a single value has an infinite interval."""
    from scipy import stats
    v = np.asarray(values, dtype=float)
    m = float(v.mean())
    if len(v) < 2:
        return m, -math.inf, math.inf
    half = float(stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return m, m - half, m + half


def log_ratios(results: dict, variant: str, seeds, k: int, base: str = "fm") -> list[float]:
    """log(FD_variant / FD_base) per seed at `k` Euler steps; `results[(variant, seed)]` are fine-tune scores."""
    return [math.log(results[(variant, s)]["by_steps"][str(k)]["fd"] / results[(base, s)]["by_steps"][str(k)]["fd"])
            for s in seeds]


def compare(results: dict, variants, seeds, sample_steps, base: str = "fm") -> list[dict]:
    """One row per (variant, budget): mean log ratio to `base`, its 95% interval, and the per-seed values."""
    rows = []
    for v in variants:
        if v == base:
            continue
        for k in sample_steps:
            r = log_ratios(results, v, seeds, k, base)
            m, lo, hi = t_interval(r)
            rows.append({"variant": v, "sample_steps": k, "mean_log_ratio": m, "ci95": [lo, hi], "per_seed": r,
                         "seeds": list(seeds)})
    return rows


def choose(rows: list[dict]) -> dict:
    """The variant with the lowest mean log FD ratio at SELECT_AT steps (a ratio below 0 beats FM)."""
    at = [r for r in rows if r["sample_steps"] == SELECT_AT]
    best = min(at, key=lambda r: r["mean_log_ratio"])
    return {"variant": best["variant"], "rule": f"lowest mean log(FD/FD_fm) at {SELECT_AT} Euler steps on the "
                                                "selection seeds", "selection_row": best}


def verdict(mean: float, lo: float, hi: float, base: str = "FM") -> str:
    """Plain words for an interval of log ratios to `base`."""
    pct = lambda x: f"{100 * (math.exp(x) - 1):+.1f}%"  # noqa: E731
    if hi < 0:
        return f"beats {base}: FD {pct(mean)} (95% CI {pct(lo)} to {pct(hi)})"
    if lo > 0:
        return f"loses to {base}: FD {pct(mean)} (95% CI {pct(lo)} to {pct(hi)})"
    return f"not distinguishable from {base}: FD {pct(mean)} (95% CI {pct(lo)} to {pct(hi)})"
