"""What an experiment hands to the report: plain structured content, rendered by ``report``."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class TableBlock:
    caption: str
    rows: list[list[str]]  # first row is the header


@dataclass
class FigureBlock:
    path: Path
    caption: str


@dataclass
class TextBlock:
    """Verbatim text (e.g. a model's generated continuations), shown as is, never interpreted as markup."""

    caption: str
    text: str


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)  # plain text, one paragraph each
    tables: list[TableBlock] = field(default_factory=list)
    figures: list[FigureBlock] = field(default_factory=list)
    texts: list[TextBlock] = field(default_factory=list)  # after the tables, before the figures


def conventions_table(conventions: dict, skip: tuple[str, ...] = ()) -> TableBlock:
    return TableBlock("Conventions", [["convention", "value"],
                                      *([k, str(v)] for k, v in conventions.items() if k not in skip)])


def opening(sentences: list[str]) -> list[str]:
    """A section's opening paragraph from its generated sentences (none when there is nothing to say)."""
    return [" ".join(sentences)] if sentences else []


def value_of(metric) -> float | None:
    """A metric's point value, whether stored as a number or as an estimate {"value", "ci_low", "ci_high"}."""
    if isinstance(metric, dict):
        return metric.get("value")
    return metric


def interval_of(metric) -> tuple[float, float] | None:
    """A metric's (ci_low, ci_high), or None for a plain number (no interval was computed)."""
    if isinstance(metric, dict) and metric.get("ci_low") is not None and metric.get("ci_high") is not None:
        return metric["ci_low"], metric["ci_high"]
    return None
