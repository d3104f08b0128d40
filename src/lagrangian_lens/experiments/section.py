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
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)  # plain text, one paragraph each
    tables: list[TableBlock] = field(default_factory=list)
    figures: list[FigureBlock] = field(default_factory=list)


def conventions_table(conventions: dict, skip: tuple[str, ...] = ()) -> TableBlock:
    return TableBlock("Conventions", [["convention", "value"],
                                      *([k, str(v)] for k, v in conventions.items() if k not in skip)])
