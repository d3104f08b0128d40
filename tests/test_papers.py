"""The shipped published numbers: each names a metric the toolkit reports, and runs find theirs or a stand-in's."""
import pytest

from lagrangian_lens.analysis.stp import HEADLINE as STP_METRICS
from lagrangian_lens.data.papers import STAND_INS, missing, paper_values, published
from lagrangian_lens.experiments.energy import DETAIL, HEADLINE
from lagrangian_lens.experiments.steer_report import PAPER_COLUMNS, table3_rows

REPORTED = {"energy": set(HEADLINE) | set(DETAIL), "stp": set(STP_METRICS),
            "separator": {"r2_centered", "oracle_r2_centered"}, "steer": set(PAPER_COLUMNS)}


@pytest.mark.parametrize("record", published(), ids=lambda r: f"{r.experiment}:{r.model}:{r.metric}")
def test_every_published_number_names_a_metric_the_toolkit_reports(record):
    assert record.metric in REPORTED[record.experiment]
    assert record.definition and record.source


def test_a_run_gets_its_stand_ins_numbers_labelled_as_such():
    values = paper_values("stp", "smollm2-135m-instruct", "pretrained")
    assert values["decelerating_fraction"] == "0.979 (GPT-2 small, stand-in)"
    assert paper_values("stp", "smollm2-135m-instruct", "random") == {}
    assert paper_values("separator", "SPLM", "pretrained") == {"r2_centered": "0.957 (SPLM)"}


def test_a_claim_about_all_models_applies_to_every_pretrained_run():
    assert paper_values("energy", "some-other-model", "pretrained") == {"classical_energy_cv": "> 0.5 (all models)"}


def test_what_is_missing_says_why():
    assert all(m["why"] for m in missing())
    assert "smollm2-135m-instruct" in STAND_INS


def test_table_3_prints_the_papers_rows_under_their_columns():
    rows = table3_rows([])
    header, paper = rows[0], {r[0]: r for r in rows[1:]}
    smol = paper["paper: SmolLM2-135M-Instruct"]
    assert smol[header.index(PAPER_COLUMNS["natural_mean"])] == "4.84"
    assert smol[header.index(PAPER_COLUMNS["steered_mean"])] == "7.61"
    assert smol[header.index(PAPER_COLUMNS["cohens_d"])] == "0.99"
    assert smol[header.index(PAPER_COLUMNS["texts"])] == "50"
