"""The steer command end to end on a tiny model: Table 3's numbers follow from the per-pair scores on disk, a
re-run resumes, a site the model lacks fails before any steering, and the report takes the finished folder."""
import csv
import json

import numpy as np
import pytest
import torch

from lagrangian_lens.cli import main
from lagrangian_lens.errors import TrajectoryError
from lagrangian_lens.experiments.steer import select_texts
from lagrangian_lens.mechanics.paired import paired_comparison
from lagrangian_lens.trajectories import Trajectory

PROTOCOL = ["--n-prompts", "4", "--texts", "3", "--context-tokens", "8", "--positions", "2",
            "--continuation-tokens", "3", "--energy-tokens", "4", "--n-random", "5", "--n-bootstrap", "50",
            "--judges", "embedding", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def steered(tmp_path_factory, tiny_dir):
    out = tmp_path_factory.mktemp("steer") / "run"
    model = f"random:{tiny_dir}"
    args = ["steer", "--model", model, *PROTOCOL, "--judges", f"lm:{model}", "--out", str(out)]
    assert main(args) == 0
    return out, args


def test_table_3_follows_from_the_scores_on_disk(steered):
    out, _ = steered
    (entry,) = json.loads((out / "results.json").read_text())["runs"]
    run = out / entry["run"]
    with open(run / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for judge in entry["conventions"]["judges"]:
        per_text = {}
        for method in ("natural", "jacobian"):
            values = np.full((3, 2), np.nan)
            for r in rows:
                if r["judge"] == judge and r["method"] == method:
                    values[int(r["text"]), int(r["position_index"])] = float(r["score"])
            assert np.isfinite(values).all()
            per_text[method] = values.mean(axis=1)
        expected = paired_comparison(per_text["natural"], per_text["jacobian"], n_boot=0)
        m = entry["metrics"]
        np.testing.assert_allclose(m[f"{judge}.jacobian.p_value"], expected.p_value, rtol=1e-9)
        np.testing.assert_allclose(m[f"{judge}.jacobian.cohens_dz"]["value"], expected.cohens_dz, rtol=1e-9)
        np.testing.assert_allclose(m[f"{judge}.natural"]["value"], per_text["natural"].mean(), rtol=1e-9)
        np.testing.assert_allclose(m[f"{judge}.jacobian"]["value"], per_text["jacobian"].mean(), rtol=1e-9)
    assert entry["metrics"]["texts"] == 3 and entry["conventions"]["texts_used"] == [0, 1, 2]
    # The lists' length is the stage's top_k, not the trajectory sampler's top_k of the same name.
    assert entry["conventions"]["top_k"] == 10
    table3 = json.loads((run / "table3.json").read_text())
    assert {j["name"] for j in table3["judges"]} == set(entry["conventions"]["judges"])
    assert all(j["scale"] for j in table3["judges"])


def test_every_pair_is_recorded_for_every_method(steered):
    out, _ = steered
    (entry,) = json.loads((out / "results.json").read_text())["runs"]
    with open(out / entry["run"] / "pairs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    methods = {r["method"] for r in rows}
    assert methods == {"natural", "jacobian", "additive", "random", "best_random", "logit_bias"}
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        assert sorted((int(r["text"]), int(r["position"])) for r in mine) == [(t, p) for t in range(3) for p in (8, 9)]
        assert all(len(r["top_k"].split(" | ")) == 10 for r in mine)
    jac = [r for r in rows if r["method"] == "jacobian"]
    # ΔS = ln(½‖δh‖²) − Δ ln p, from the row's own numbers.
    for r in jac:
        if float(r["delta_norm"]) > 0:
            expected = np.log(0.5 * float(r["delta_norm"]) ** 2) - float(r["logp_gain"])
            np.testing.assert_allclose(float(r["action_increment"]), expected, rtol=1e-6)
    # The baselines are compared on the pairs Algorithm 1 moved (δh > 0) only.
    moved = {(r["text"], r["position"]) for r in jac if float(r["delta_norm"]) > 0}
    assert moved, "the tiny protocol moved no pair: the check below would be empty"
    for b in ("additive", "random", "best_random"):
        reached = [np.isfinite(float(r["norm_at_equal_gain"])) for r in rows
                   if r["method"] == b and (r["text"], r["position"]) in moved]
        np.testing.assert_allclose(entry["metrics"][f"{b}.reached"]["value"], np.mean(reached), rtol=1e-12)
    np.testing.assert_allclose(entry["metrics"]["jacobian.unmoved"]["value"], 1 - len(moved) / len(jac), rtol=1e-12)
    examples = (out / entry["run"] / "examples.txt").read_text()
    assert "natural" in examples and "jacobian" in examples and "true continuation" in examples
    energy = json.loads((out / entry["run"] / "energy.json").read_text())
    assert {"natural", "steered", "paired"} <= energy.keys()
    assert (out / "figures" / "steer_paired.png").is_file() and (out / "figures" / "steer_delta_norms.svg").is_file()


def test_a_rerun_resumes_and_prints_table_3(steered, capsys):
    out, args = steered
    before = (out / "results.json").read_text()
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "[resume] steer/" in captured.err
    assert "paper: SmolLM2-135M-Instruct" in captured.out and "7.61" in captured.out
    assert (out / "results.json").read_text() == before


def test_the_report_takes_a_finished_steer_folder(steered, tmp_path, tiny_dir):
    out, _ = steered
    report = tmp_path / "report"
    assert main(["report", "--model", f"random:{tiny_dir}", "--no-random-twins", "--n-prompts", "2",
                 "--new-tokens", "5", "--n-bootstrap", "10", "--n-permutations", "5", "--steer", str(out),
                 "--device", "cpu", "--quiet", "--out", str(report)]) == 0
    html = (report / "report.html").read_text()
    assert "Jacobian steering (Table 3)" in html and "GPT-4.1" in html


def test_a_site_the_model_lacks_fails_before_any_steering(tmp_path, tiny_dir, capsys):
    code = main(["steer", "--model", f"random:{tiny_dir}", *PROTOCOL, "--site", "block.7", "--out",
                 str(tmp_path / "s")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: site block.7 out of range: the model has 3 blocks")
    assert not list((tmp_path / "s").glob("*/result.json"))


def _text(n: int) -> Trajectory:
    ids = torch.arange(n)
    return Trajectory(token_ids=ids, states=torch.zeros(1, n - 1, 2), logprobs=torch.zeros(n - 1),
                      max_logprobs=torch.zeros(n - 1), sites=("final",), n_context=1)


def test_texts_too_short_are_skipped_and_listed():
    texts = [_text(n) for n in (10, 4, 12, 3, 11, 20)]
    assert select_texts(texts, need=10, n_texts=3) == ([0, 2, 4], [1, 3])
    assert select_texts(texts, need=10, n_texts=9) == ([0, 2, 4, 5], [1, 3])
    with pytest.raises(TrajectoryError, match="only 1 of 6 prompts hold the 15 tokens"):
        select_texts(texts, need=15, n_texts=3)


def test_every_metric_the_section_prints_has_a_definition():
    from lagrangian_lens.experiments.definitions import STEER, undefined
    from lagrangian_lens.experiments.steer_report import ENERGY_KEYS, STEERING_KEYS

    assert undefined([*STEERING_KEYS, *ENERGY_KEYS], [["quantity"], *STEER]) == []


@pytest.mark.slow
def test_steering_the_default_model_reaches_eta_with_less_norm_than_the_additive_baseline(tmp_path):
    out = tmp_path / "steer"
    assert main(["steer", "--n-prompts", "6", "--texts", "3", "--positions", "2", "--continuation-tokens", "4",
                 "--energy-tokens", "0", "--n-random", "10", "--n-bootstrap", "20", "--judges", "embedding",
                 "--device", "cpu", "--quiet", "--out", str(out)]) == 0
    (entry,) = json.loads((out / "results.json").read_text())["runs"]
    m = entry["metrics"]
    assert m["jacobian.success"]["value"] == 1.0  # η = 0.5 at the bias-free head of a trained model
    assert m["additive.norm_ratio"]["value"] >= 1.0  # Theorem E.1 on the real model, beyond the linear regime
    assert entry["conventions"]["site"] == "final"
