"""``lagrangian-lens doctor``: is every reading the toolkit takes of this model right, with this transformers?

A conformance check against the model's own outputs, to run before trusting the toolkit on a new model or a new
transformers release. By default it builds a tiny random model per architecture-table row (and layout variants,
and decoders left to the fallback, from ``models.pretrained.tiny``) plus the toolkit's own SPLM and GPT, and checks
each reading (``readings``); given models, it checks those. Each (model, reading) cell gets a verdict
(``verdicts``): SUPPORTED, DEGRADED, SILENTLY_WRONG or ERROR.
"""
from __future__ import annotations

import platform
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import transformers
from torch import nn
from tqdm.auto import tqdm

from ..compat import TESTED_TRANSFORMERS
from ..errors import ConfigError
from ..experiments.tables import format_table
from ..models.own.gpt import GPT, GPTConfig
from ..models.own.splm import SPLM, SPLMConfig
from ..models.pretrained.loading import DTYPES, load_model
from ..models.pretrained.tiny import table_names, tiny_model
from ..models.spec import ModelSpec
from ..trajectories.own import own_model_trajectories
from . import readings
from .verdicts import ERROR, SILENTLY_WRONG, VERDICTS, Cell, Comparison, worst

READINGS = ("states, teacher-forced", "states, generated", "token stats", "attention", "attention, KV-cache steps",
            "steering δh = 0", "own depth sites")
# Three texts of unequal lengths, for models with a tokenizer; tiny models read seeded random ids of these lengths.
TEXTS = ("The quick brown fox jumps over the lazy dog near the river bank.",
         "Energy is conserved in a closed system.",
         "In the beginning the universe was created. This has made a lot of people very angry and been widely "
         "regarded as a bad move.")
LENGTHS = (9, 6, 13)


@dataclass
class DoctorConfig:
    models: list[str] = field(default_factory=list)  # models to check (alias, hub id, folder, .gguf, random:<spec>); none: a tiny random model per architecture-table row, and the own SPLM and GPT
    json: bool = False  # print the findings as JSON instead of a table
    dtype: str = "float32"  # the precision given models load in (tolerances scale with it)
    trust_remote_code: bool = False  # let a hub model run its own code; never without this flag

    def __post_init__(self):
        for spec in self.models:
            ModelSpec.parse(spec)  # a bad spec fails here, before anything loads
        if self.dtype not in DTYPES:
            raise ConfigError("dtype", f"unknown dtype {self.dtype!r}; choose one of {sorted(DTYPES)}")

    def load(self) -> list | None:
        """The given models, loaded; None for the default set."""
        return [load_model(spec, dtype=self.dtype, trust_remote_code=self.trust_remote_code)
                for spec in self.models] or None


@dataclass
class ModelCheck:
    """Every reading of one model: {reading: Cell}, in :data:`READINGS` order; readings that do not apply are absent."""

    name: str  # the model as given (a spec, or a tiny model's name)
    model_type: str | None  # config.model_type, or the own model's class
    cells: dict[str, Cell] = field(default_factory=dict)

    def __post_init__(self):
        unknown = set(self.cells) - set(READINGS)
        if unknown:
            raise ConfigError("cells", f"unknown reading(s) {sorted(unknown)}; the readings are {READINGS}")

    @property
    def verdict(self) -> str:
        return worst(c.verdict for c in self.cells.values())


@dataclass
class DoctorReport:
    """The doctor's findings, with the versions they hold for."""

    models: list[ModelCheck]
    versions: dict = field(default_factory=lambda: {
        "transformers": transformers.__version__, "torch": torch.__version__, "python": platform.python_version()})
    tested_range: tuple[str, str] = TESTED_TRANSFORMERS

    @property
    def ok(self) -> bool:
        """No reading silently wrong and none refused."""
        return all(m.verdict not in (SILENTLY_WRONG, ERROR) for m in self.models)

    def as_json(self) -> dict:
        return {"versions": self.versions, "tested_transformers": list(self.tested_range), "ok": self.ok,
                "verdicts": list(VERDICTS),
                "models": [{"name": m.name, "model_type": m.model_type, "verdict": m.verdict,
                            "cells": {r: c.as_json() for r, c in m.cells.items()}} for m in self.models]}

    def table(self) -> str:
        """The terminal view: one row per model, one column per reading, then every note."""
        shown = [r for r in READINGS if any(r in m.cells for m in self.models)]
        rows = [["model", "model_type", *shown]]
        notes = []
        for m in self.models:
            rows.append([m.name, m.model_type or "-", *(_cell_text(m.cells.get(r)) for r in shown)])
            notes += [f"{m.name} · {r}: {c.verdict}: {c.note}" for r, c in m.cells.items() if c.note]
        lo, hi = self.tested_range
        head = (f"transformers {self.versions['transformers']} (tested {lo}–{hi}), torch {self.versions['torch']}; "
                "cells: verdict (largest error / tolerance)")
        return "\n".join([head, "", format_table(rows), *([""] + notes if notes else [])])


def _cell_text(cell: Cell | None) -> str:
    if cell is None:
        return "n/a"
    if cell.max_error is None:
        return cell.verdict
    return f"{cell.verdict} ({cell.max_error:.1e} / {cell.tolerance:.0e})"


def sequences_for(model: nn.Module, tokenizer=None) -> list[list[int]]:
    """Three token sequences of unequal lengths: the tokenized :data:`TEXTS`, or seeded random ids below the
    vocabulary (0 left out: the tiny models' pad and special token)."""
    if tokenizer is not None:
        return [tokenizer(text)["input_ids"] for text in TEXTS]
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    return [torch.randint(1, vocab, (n,), generator=generator).tolist() for n in LENGTHS]


def check_pretrained(model: nn.Module, tokenizer=None, *, name: str | None = None,
                     sequences: Sequence[Sequence[int]] | None = None) -> ModelCheck:
    """Every reading of a transformers causal LM (see ``readings``), on ``sequences`` (default
    :func:`sequences_for`)."""
    seqs = [list(s) for s in (sequences or sequences_for(model, tokenizer))]
    model_type = getattr(model.config, "model_type", None)
    try:
        cells = list(readings.trajectories(model, tokenizer, seqs))
    except Exception as exc:  # noqa: BLE001 - each reading's failure is reported, never hidden
        cells = [readings.refusal(r, exc) for r in READINGS[:3]]
    cells += [readings.guarded("attention", lambda: readings.attention(model, seqs)),
              readings.guarded("attention, KV-cache steps", lambda: readings.attention_cached_steps(model, seqs)),
              readings.guarded("steering δh = 0", lambda: readings.steering_zero(model, seqs))]
    return ModelCheck(name or model_type or type(model).__name__, model_type, {c.reading: c for c in cells})


def check_own(model: nn.Module, *, name: str | None = None) -> ModelCheck:
    """An own model's depth sites and token stats (``trajectories.own``) against its ``depth_states`` and logits."""
    cmp = Comparison()
    generator = torch.Generator().manual_seed(0)
    seqs = [torch.randint(0, model.config.vocab_size, (n,), generator=generator).tolist() for n in LENGTHS]

    def run() -> Cell:
        for b, (tr, seq) in enumerate(zip(own_model_trajectories(model, seqs), seqs)):
            idx = torch.tensor([seq], device=next(model.parameters()).device)
            states, final = model.depth_states(idx)
            with torch.no_grad():
                logp = torch.log_softmax(model(idx)[0][0, :-1].float(), -1)  # (T, V)
            T = tr.n_positions
            for site, want in zip(tr.sites, (*states, final)):
                cmp.add(f"sequence {b} {site}", tr.at(site), want[0, :T].detach().float().cpu())
            cmp.add(f"sequence {b} logprobs", tr.logprobs, logp.gather(-1, idx[0, 1:, None])[:, 0].cpu())
            cmp.add(f"sequence {b} max_logprobs", tr.max_logprobs, logp.max(-1).values.cpu())
        if len(tr.sites) != len(states) + 1:
            cmp.failures.append(f"{len(tr.sites)} sites for {len(states)} depth states and the read-out input")
        return cmp.cell("own depth sites")

    kind = type(model).__name__
    return ModelCheck(name or kind, kind, {"own depth sites": readings.guarded("own depth sites", run)})


def own_models() -> dict[str, nn.Module]:
    """A tiny SPLM and a tiny matched GPT, seeded."""
    torch.manual_seed(0)
    return {"splm": SPLM(SPLMConfig(vocab_size=64, block_size=32, d_model=16, n_steps=3, v_hidden=32)).eval(),
            "gpt": GPT(GPTConfig(vocab_size=64, block_size=32, d_model=32, n_layer=2, n_head=4)).eval()}


def diagnose(models: Sequence | None = None, *, progress: bool = False) -> DoctorReport:
    """Check ``models`` (``LoadedModel`` objects), or with None every tiny table model and the own models."""
    checks = []
    if models is None:
        for name in tqdm(table_names(), desc="doctor", disable=not progress, leave=False):
            checks.append(check_pretrained(tiny_model(name), name=name))
        checks += [check_own(model, name=name) for name, model in own_models().items()]
    else:
        checks = [check_pretrained(loaded.model, loaded.tokenizer, name=loaded.description.spec) for loaded in models]
    return DoctorReport(checks)


__all__ = ["READINGS", "DoctorConfig", "DoctorReport", "ModelCheck", "check_own", "check_pretrained", "diagnose"]
