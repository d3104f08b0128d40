"""The papers' published numbers, shipped as data (``papers/published.json``), for the report's "paper" column.

Each record is one number the paper (or its authors' public result files) gives for one model, under the
toolkit's metric name, with the paper's own definition and its source. A measured run is compared with a
record of its own model, or, where the paper never measured that model, of the paper's model closest to it,
labelled as a stand-in (``STAND_INS``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

from ..errors import DataError

# Toolkit models -> the paper's models they stand in for, closest first. The Q4_1 GGUF of SmolLM2-135M-Instruct
# (the default) is the offline stand-in for the energy paper's SmolLM2-135M; the STP paper measured GPT-2 small
# and Pythia-160M only, whose closest offline neighbour in size is the same model.
STAND_INS = {
    "smollm2-135m-instruct": ("SmolLM2-135M", "GPT-2 small", "Pythia-160M"),
}
# The separator's own models under the paper's names.
SEPARATOR_MODELS = {"splm": "SPLM", "splm_ln": "SPLM (LN after step)", "gpt": "matched GPT"}


@dataclass(frozen=True)
class Published:
    """One published number."""

    paper: str  # key of the paper ('energy', 'stp')
    experiment: str  # the toolkit experiment whose metric it is
    model: str  # the model the paper measured
    weights: str  # 'pretrained' or 'random'
    metric: str  # the toolkit metric it corresponds to
    value: float | str  # the number (a claim such as '> 0.5' is a string)
    definition: str  # the paper's own definition
    source: str  # where in the paper (table, abstract) or in its authors' result files

    def label(self, stand_in: bool) -> str:
        """How the report prints it: the value and whose it is."""
        value = f"{self.value:.4g}" if isinstance(self.value, (int, float)) else self.value
        return f"{value} ({self.model}{', stand-in' if stand_in else ''})"


@cache
def _raw() -> dict:
    try:
        return json.loads(files("lagrangian_lens.data").joinpath("papers/published.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"the shipped table of published numbers is unreadable ({exc}); reinstall the package") from None


def published(experiment: str | None = None) -> list[Published]:
    """Every published number (of ``experiment``, when given), claims included."""
    raw = _raw()
    rows = [Published(r["paper"], r["experiment"], r["model"], r["weights"], r["metric"], r["value"], r["definition"],
                      r["source"]) for r in raw["records"]]
    rows += [Published(c["paper"], c["experiment"], "all models", "pretrained", c["metric"], c["claim"],
                       c["definition"], c.get("source", "text")) for c in raw["claims"]]
    return [r for r in rows if experiment is None or r.experiment == experiment]


def missing() -> list[dict]:
    """What the table lacks, and why (printed in the report so an empty cell is not read as 'no number')."""
    return list(_raw()["missing"])


def paper_values(experiment: str, model: str, weights: str) -> dict[str, str]:
    """{metric: printable published value} for a run of ``model`` (an alias or spec) with ``weights``.

    The paper's own model wins; otherwise the first stand-in that has the metric; a claim about all models
    applies to every pretrained run.
    """
    key = model.lower()
    names = [key, *(m.lower() for m in STAND_INS.get(key, ()))]
    out: dict[str, str] = {}
    rows = [r for r in published(experiment) if r.weights == weights]
    for metric in dict.fromkeys(r.metric for r in rows):
        candidates = [r for r in rows if r.metric == metric]
        for rank, name in enumerate(names):
            hit = next((r for r in candidates if r.model.lower() == name), None)
            if hit is not None:
                out[metric] = hit.label(stand_in=rank > 0)
                break
        else:
            claim = next((r for r in candidates if r.model == "all models"), None)
            if claim is not None:
                out[metric] = claim.label(stand_in=False)
    return out
