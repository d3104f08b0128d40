"""Printable tables of results entries: one row per metric, one column per run, and per pretrained run with a
random twin the paper's number (``data.papers``) and the separation of the two (``mechanics.separation``)."""
from __future__ import annotations

from collections.abc import Sequence

from ..data.papers import paper_values

SEPARATION_HEADER = "pretrained − random [CI]; δ; verdict"


def cell(value) -> str:
    """A metric as text: ``value [ci_low, ci_high]`` for estimates, 4 significant digits for numbers."""
    if value is None:
        return "-"
    if isinstance(value, dict):  # an estimate; a part that was NaN is stored as null and prints as -
        part = lambda x: "-" if x is None else f"{x:.4g}"  # noqa: E731
        return f"{part(value.get('value'))} [{part(value.get('ci_low'))}, {part(value.get('ci_high'))}]"
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


def separation_cell(sep: dict | None) -> str:
    """``0.081 [0.07, 0.09]; δ = 0.93; separates`` (δ = - where it is unavailable); ``-`` without a separation."""
    if not sep:
        return "-"
    number = lambda x: "-" if x is None else f"{x:.3g}"  # noqa: E731
    return (f"{number(sep['difference'])} [{number(sep['ci_low'])}, {number(sep['ci_high'])}]; "
            f"δ = {number(sep['cliffs_delta'])}; {sep['verdict']}")


def paper_columns(entries: list[dict], experiment: str | None) -> list[tuple[str, dict[str, str]]]:
    """(header, {metric: published value}) per pretrained model whose paper (or stand-in) numbers exist."""
    if experiment is None:
        return []
    columns = []
    for model in dict.fromkeys(e["model"] for e in entries if e.get("weights") != "random"):
        values = paper_values(experiment, model, "pretrained")
        if values:
            columns.append((f"paper, {model} (pretrained)", values))
    return columns


def summary_rows(entries: list[dict], keys: Sequence[str], experiment: str | None = None) -> list[list[str]]:
    """Header and one row per metric of ``keys``: its cell in every run, then the paper's number for it (when
    ``experiment`` is given and the paper reports that model or a stand-in, see ``data.papers``), then its
    separation in every pretrained run that carries one (``entry["separation"]``, set by the runner, for a stage
    whose runs keep replicates). A cell without a value prints ``-``."""
    pairs = [e for e in entries if (e.get("separation") or {}).get("metrics")]
    papers = paper_columns(entries, experiment)
    header = [SEPARATION_HEADER if len(pairs) == 1 else f"{e['model']}: {SEPARATION_HEADER}" for e in pairs]
    rows = [["metric", *(e["run"] for e in entries), *(title for title, _ in papers), *header]]
    for key in keys:
        if key.startswith("p_"):
            cells = [p_value_cell(e["metrics"].get(key), e.get("conventions", {}).get("n_permutations"))
                     for e in entries]
        else:
            cells = [cell(e["metrics"].get(key)) for e in entries]
        rows.append([key, *cells, *(values.get(key, "-") for _, values in papers),
                     *(separation_cell(e["separation"]["metrics"].get(key)) for e in pairs)])
    return rows


def format_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])
