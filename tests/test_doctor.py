"""The doctor: every table row's readings agree with the model's own outputs, and a broken reading is caught."""
from __future__ import annotations

import dataclasses
import json
import logging
import tomllib
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement

from lagrangian_lens import compat
from lagrangian_lens.cli import main
from lagrangian_lens.doctor import READINGS, DoctorReport, check_own, check_pretrained, own_models
from lagrangian_lens.doctor.verdicts import (
    DEGRADED,
    ERROR,
    SILENTLY_WRONG,
    SUPPORTED,
    Cell,
    Comparison,
    tolerance,
)
from lagrangian_lens.errors import ConfigError
from lagrangian_lens.models.pretrained.tiny import table_names, tiny_model
from lagrangian_lens.trajectories import attention, sites

from .conftest import log_probability_models, sink_logit_model

HF_READINGS = [r for r in READINGS if r != "own depth sites"]


@pytest.mark.parametrize("name", table_names())
def test_every_table_row_is_supported_or_degraded(name):
    check = check_pretrained(tiny_model(name), name=name)
    assert list(check.cells) == HF_READINGS
    for cell in check.cells.values():
        assert cell.verdict in (SUPPORTED, DEGRADED), f"{name} · {cell.reading}: {cell.verdict}: {cell.note}"
        assert (cell.verdict == DEGRADED) == bool(cell.note)  # a limit is always stated
    # DEGRADED only where the layers bypass the interface, whose capture reads log-probabilities.
    assert (check.cells["attention"].verdict == DEGRADED) == (name in log_probability_models())
    assert check.cells["steering δh = 0"].max_error == 0.0 and check.cells["steering δh = 0"].tolerance == 0.0


@pytest.mark.parametrize("name", sorted(own_models()))
def test_own_models_depth_sites_are_supported(name):
    check = check_own(own_models()[name], name=name)
    assert check.verdict == SUPPORTED and list(check.cells) == ["own depth sites"]


def test_a_site_hook_shifted_by_one_position_is_silently_wrong(monkeypatch):
    pop = sites.SiteRecorder.pop
    monkeypatch.setattr(sites.SiteRecorder, "pop", lambda self: {s: h.roll(1, dims=1) for s, h in pop(self).items()})
    check = check_pretrained(tiny_model("llama"), name="llama")
    for reading in ("states, teacher-forced", "states, generated"):
        cell = check.cells[reading]
        assert cell.verdict == SILENTLY_WRONG and "error" in cell.note and cell.max_error > cell.tolerance
    assert check.verdict == SILENTLY_WRONG
    assert not DoctorReport([check]).ok


def test_own_model_sites_read_one_depth_step_off_are_silently_wrong(monkeypatch):
    import lagrangian_lens.doctor as doctor

    own = doctor.own_model_trajectories

    def shifted(model, seqs):  # every site reads the state one depth step later
        return [dataclasses.replace(t, states=t.states.roll(-1, dims=0)) for t in own(model, seqs)]

    monkeypatch.setattr(doctor, "own_model_trajectories", shifted)
    cell = check_own(own_models()["gpt"], name="gpt").cells["own depth sites"]
    assert cell.verdict == SILENTLY_WRONG and "embed" in cell.note


def test_a_mask_dropped_from_the_capture_is_silently_wrong(monkeypatch):
    def no_mask(mask, scores, model_type=None):
        B, _, q, k = scores.shape
        return torch.ones(B, q, k, dtype=torch.bool), 0.0

    monkeypatch.setattr(attention, "_mask_parts", no_mask)
    check = check_pretrained(tiny_model("llama"), name="llama")
    for reading in ("attention", "attention, KV-cache steps"):
        assert check.cells[reading].verdict == SILENTLY_WRONG, check.cells[reading]
    assert "the mask differs" in check.cells["attention"].note
    assert check.cells["states, teacher-forced"].verdict == SUPPORTED  # the hooks are fine, only the capture lies


def test_a_refusal_is_an_error_with_its_message():
    check = check_pretrained(sink_logit_model(), name="sinks")
    assert check.cells["attention"].verdict == ERROR and "s_aux" in check.cells["attention"].note
    assert check.cells["states, teacher-forced"].verdict == SUPPORTED
    report = DoctorReport([check])
    assert not report.ok and "sinks · attention: ERROR:" in report.table()


def test_comparisons_hold_each_reading_to_its_tolerance():
    cmp = Comparison()
    ref = torch.tensor([1.0, -2.0, float("-inf")])
    cmp.add("same", ref.clone(), ref)
    assert cmp.cell("r").verdict == SUPPORTED and cmp.worst == (0.0, tolerance(ref))
    assert tolerance(ref) == pytest.approx(84 * torch.finfo(torch.float32).eps * 2)
    cmp.add("off", ref + torch.tensor([0.0, 1e-3, 0.0]), ref)
    cell = cmp.cell("r")
    assert cell.verdict == SILENTLY_WRONG and cell.max_error == pytest.approx(1e-3, rel=1e-3)
    assert cell.note.startswith("off: error 0.001 > tolerance")
    bits = Comparison()
    bits.add("bit", torch.tensor([1.0 + 1e-7]), torch.tensor([1.0]), tol=0.0)
    assert bits.cell("r").verdict == SILENTLY_WRONG
    with pytest.raises(ConfigError, match="SUPPORTED with error"):
        Cell("r", SUPPORTED, max_error=1.0, tolerance=0.5)


def test_cli_checks_a_given_model_and_prints_json(tiny_dir, capsys):
    assert main(["doctor", "--model", f"random:{tiny_dir}", "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    (model,) = out["models"]
    assert out["ok"] and model["model_type"] == "llama" and list(model["cells"]) == HF_READINGS
    assert {c["verdict"] for c in model["cells"].values()} == {SUPPORTED}
    assert out["versions"]["transformers"] and out["tested_transformers"] == list(compat.TESTED_TRANSFORMERS)


def test_cli_refuses_bad_input_before_loading(capsys):
    assert main(["doctor", "--dtype", "float64"]) == 2
    assert "--dtype: unknown dtype 'float64'" in capsys.readouterr().err


def test_a_transformers_newer_than_the_tested_range_is_warned_about_once(monkeypatch, caplog):
    lo, hi = compat.TESTED_TRANSFORMERS
    assert compat.untested_transformers(hi) is None and compat.untested_transformers(lo) is None
    assert compat.untested_transformers(f"{hi}.dev0") is None  # a dev build of the newest tested release
    newer = "99.0.0"
    assert compat.untested_transformers(newer) == (f"transformers {newer} is newer than the tested range {lo}–{hi}; "
                                                   "run `lagrangian-lens doctor` to check your model")
    monkeypatch.setattr(compat.transformers, "__version__", newer)
    monkeypatch.setattr(compat, "_warned", False)
    model = tiny_model("llama")
    with caplog.at_level(logging.WARNING, logger="lagrangian_lens"):
        for _ in range(2):
            with sites.record_sites(model, ("final",)):
                pass
    assert [r.getMessage() for r in caplog.records] == [compat.untested_transformers(newer)]


def test_the_tested_range_is_the_range_pyproject_admits():
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    (spec,) = [Requirement(d) for d in project["dependencies"] if Requirement(d).name == "transformers"]
    lo, hi = compat.TESTED_TRANSFORMERS
    assert spec.specifier.contains(lo) and spec.specifier.contains(hi)
    assert not spec.specifier.contains(str(_previous(lo)))  # the lower bound is the tested one, no lower


def _previous(version: str) -> str:
    major, minor, patch = (int(x) for x in version.split("."))
    return f"{major}.{minor}.{patch - 1}" if patch else f"{major}.{minor - 1}.99" if minor else f"{major - 1}.99.99"
