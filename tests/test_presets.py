"""Presets set a paper's protocol under the user's explicit options, and runs record what they followed;
cross-model summaries (Table 5's Pearson r) have known answers."""
import json
import math

import numpy as np
import pytest

from lagrangian_lens.analysis import cross_model
from lagrangian_lens.analysis.cross_model import pearson, permutation_p_value, size_correlations
from lagrangian_lens.cli import build_parser
from lagrangian_lens.cli.args import dataclass_from_args
from lagrangian_lens.errors import ConfigError
from lagrangian_lens.experiments.energy import EnergyConfig
from lagrangian_lens.experiments.presets import PRESETS, from_preset, preset_record
from lagrangian_lens.experiments.steer import SteerConfig
from lagrangian_lens.experiments.stp import StpConfig
from lagrangian_lens.report import ReportConfig


def test_a_preset_sets_its_values_and_explicit_options_override_them():
    cfg = from_preset(EnergyConfig, "table1", new_tokens=20)
    assert (cfg.run.prompts, cfg.run.n_prompts, cfg.trajectories.context_tokens) == ("wikitext-2-test", 100, 50)
    assert cfg.trajectories.new_tokens == 20
    record = preset_record(cfg)
    assert record["name"] == "table1"
    assert record["departures"] == {"new_tokens": {"preset": 100, "run": 20}}
    assert record["values"]["new_tokens"] == 100


def test_the_cli_applies_a_preset_under_explicit_options():
    parser = build_parser()
    args = parser.parse_args(["energy", "--preset", "table1", "--n-prompts", "7", "--out", "x"])
    cfg = dataclass_from_args(EnergyConfig, args)
    assert (cfg.run.preset, cfg.run.n_prompts, cfg.trajectories.new_tokens, cfg.run.prompts) == \
        ("table1", 7, 100, "wikitext-2-test")


CONFIGS = {"energy": EnergyConfig, "stp": StpConfig, "report": ReportConfig, "steer": SteerConfig}


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds_the_config_of_each_of_its_commands_without_departures(name):
    for command in PRESETS[name].commands:
        cfg = from_preset(CONFIGS[command], name)
        assert cfg.run.preset == name
        assert preset_record(cfg)["departures"] == {}


def test_a_preset_of_another_command_is_refused_before_anything_runs():
    with pytest.raises(ConfigError, match="protocol of"):
        from_preset(StpConfig, "table1")
    with pytest.raises(ConfigError, match="unknown preset"):
        from_preset(EnergyConfig, "table9")


def test_pearson_matches_numpy_and_the_fisher_interval():
    rng = np.random.default_rng(0)
    x = rng.normal(size=12)
    y = 0.5 * x + rng.normal(size=12)
    out = pearson(x, y)
    r = np.corrcoef(x, y)[0, 1]
    np.testing.assert_allclose(out["r"], r, rtol=1e-12)
    half = 1.959963984540054 / math.sqrt(12 - 3)
    np.testing.assert_allclose([out["ci_low"], out["ci_high"]], [math.tanh(math.atanh(r) - half),
                                                                 math.tanh(math.atanh(r) + half)], rtol=1e-9)


def test_pearson_needs_three_points_and_an_interval_four():
    assert pearson([1, 2], [3, 4])["r"] is None
    three = pearson([1, 2, 3], [1, 3, 2])
    np.testing.assert_allclose(three["r"], 0.5)
    assert three["ci_low"] is None


def test_permutation_p_value_is_exact_for_few_models():
    # A perfect monotone line: only the identity and the reversal reach |r| = 1 among the n! orderings.
    np.testing.assert_allclose(permutation_p_value([1, 2, 3], [2, 4, 6]), 2 / 6)
    np.testing.assert_allclose(permutation_p_value([1, 2, 3, 4], [1, 2, 3, 4]), 2 / 24)
    # r = 0.5 for n = 3: orderings give r in {1, .5, .5, -.5, -.5, -1}, all |r| >= .5.
    np.testing.assert_allclose(permutation_p_value([1, 2, 3], [1, 3, 2]), 1.0)


def test_sampled_permutation_p_value_agrees_with_the_exact_one(monkeypatch):
    rng = np.random.default_rng(1)
    x = rng.normal(size=8)
    y = 0.6 * x + rng.normal(size=8)
    exact = permutation_p_value(x, y)
    monkeypatch.setattr(cross_model, "EXACT_UP_TO", 7)
    sampled = permutation_p_value(x, y)
    # 20 000 draws: the sampling standard error is below 0.004 for any p.
    np.testing.assert_allclose(sampled, exact, atol=0.015)
    assert 0 < exact < 0.2  # a real effect, well above the floor 2/8!


def test_size_correlations_take_each_weight_class_on_its_own():
    entries = [{"run": f"m{i}", "weights": w, "model_description": {"n_params": n},
                "metrics": {"drift_h": {"value": v, "ci_low": v, "ci_high": v}}}
               for i, (w, n, v) in enumerate([("random", 10, 0.1), ("random", 20, 0.2), ("random", 40, 0.4),
                                              ("pretrained", 10, 0.0)])]
    rows = size_correlations(entries, ["drift_h"])
    assert [(r["weights"], r["n"]) for r in rows] == [("random", 3)]
    np.testing.assert_allclose(rows[0]["r"], 1.0)


def test_three_random_models_of_three_sizes_carry_table5s_correlation(tmp_path):
    """The energy results carry Pearson r of parameter count against drift once three models of one weight
    class have run; the r equals a direct computation on the runs' own numbers."""
    from lagrangian_lens.cli import main

    from .conftest import tiny_config

    specs = []
    for i, width in enumerate((16, 32, 48)):
        tiny_config("llama", hidden_size=width, intermediate_size=2 * width).save_pretrained(tmp_path / f"m{i}")
        specs += ["--model", f"random:{tmp_path / f'm{i}'}"]
    out = tmp_path / "e"
    assert main(["energy", *specs, "--n-prompts", "3", "--new-tokens", "24", "--n-bootstrap", "10", "--quiet",
                 "--device", "cpu", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    rows = {r["metric"]: r for r in results["across_runs"]["size_correlations"]}
    assert set(rows) == {"drift_h", "drift_e_norm"}
    runs = results["runs"]
    x = [e["model_description"]["n_params"] for e in runs]
    y = [e["metrics"]["drift_h"]["value"] for e in runs]
    assert rows["drift_h"]["n"] == 3 and len(set(x)) == 3
    np.testing.assert_allclose(rows["drift_h"]["r"], np.corrcoef(x, y)[0, 1], rtol=1e-9)
