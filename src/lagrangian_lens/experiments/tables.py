"""Printable tables of results entries: one row per metric, one column per run."""
from __future__ import annotations

from collections.abc import Sequence


def cell(value) -> str:
    """A metric as text: ``value [ci_low, ci_high]`` for estimates, 4 significant digits for numbers."""
    if value is None:
        return "-"
    if isinstance(value, dict):
        return f"{value['value']:.4g} [{value['ci_low']:.4g}, {value['ci_high']:.4g}]"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def p_value_cell(p: float | None, n_permutations: int | None) -> str:
    """A permutation p-value; at its floor 1/(n+1) it is a bound, printed as one, not as a value."""
    if p is None or not n_permutations:
        return cell(p)
    floor = 1 / (n_permutations + 1)
    return f"< {floor:.2g} (1/(n+1), n = {n_permutations})" if p <= floor * (1 + 1e-9) else cell(p)


def summary_rows(entries: list[dict], keys: Sequence[str]) -> list[list[str]]:
    rows = [["metric", *(e["run"] for e in entries)]]
    for key in keys:
        if key.startswith("p_"):
            rows.append([key, *(p_value_cell(e["metrics"].get(key), e.get("conventions", {}).get("n_permutations"))
                                for e in entries)])
        else:
            rows.append([key, *(cell(e["metrics"].get(key)) for e in entries)])
    return rows


def format_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])
