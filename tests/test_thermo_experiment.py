"""The thermo experiment end to end on tiny models: CLI, results' shapes, resume, numbers against a hand computation,
random-twin replicates, figures and the report section; and the models whose layers compute attention inline (found
at run time), analysed from their log-probabilities."""
import json

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose
from torch.testing import assert_close

import lagrangian_lens as ll
from lagrangian_lens.cli import main
from lagrangian_lens.errors import ConfigError
from lagrangian_lens.experiments import thermo  # registers the experiment (until the registry imports it)
from lagrangian_lens.experiments.config import BootstrapConfig, RunConfig, TrajectoryConfig
from lagrangian_lens.experiments.definitions import undefined
from lagrangian_lens.experiments.runner import load_replicates
from lagrangian_lens.experiments.thermo_report import ARRAYS_FILE, DETAIL, HEADLINE, report_section
from lagrangian_lens.mechanics.thermo import attention_thermo
from lagrangian_lens.trajectories import attention, count_hooks, load_trajectories
from lagrangian_lens.trajectories.attention import capture_attention

from .conftest import TEXTS, log_probability_models, table_model, tiny_model

FAST = ["--n-prompts", "2", "--new-tokens", "5", "--n-bootstrap", "20", "--quiet", "--device", "cpu"]
L, H = 3, 4  # the tiny llama's layers and heads
QUANTITIES = ("energy", "entropy", "free_energy", "specific_heat", "normalized_entropy", "sink_mass")


def test_cli_writes_per_head_arrays_figures_and_resumes(tmp_path, tiny_dir, capsys):
    out = tmp_path / "t"
    args = ["thermo", "--model", f"random:{tiny_dir}", *FAST, "--out", str(out)]
    assert main(args) == 0
    assert "mean_specific_heat" in capsys.readouterr().out
    (entry,) = json.loads((out / "results.json").read_text())["runs"]
    m, n_t = entry["metrics"], len(entry["conventions"]["temperatures"])
    for q in QUANTITIES:
        for part in ("value", "ci_low", "ci_high"):
            assert np.array(m[f"per_head_{q}"][part]).shape == (L, H), q
            assert np.array(m[f"per_layer_{q}"][part]).shape == (L,), q
        assert m[f"mean_{q}"]["ci_low"] <= m[f"mean_{q}"]["value"] <= m[f"mean_{q}"]["ci_high"], q
    assert np.array(m["peak_temperature_per_head"]).shape == (L, H) and np.array(m["heat_curve"]).shape == (n_t,)
    assert m["n_sequences"] == 2 and (m["n_layers"], m["n_heads"]) == (L, H)
    arrays = np.load(out / entry["run"] / ARRAYS_FILE)
    assert arrays["heat_curves"].shape == (n_t, L, H) and arrays["per_head.entropy.value"].shape == (L, H)
    assert arrays["by_query_position.entropy"].shape[:2] == (L, H)
    assert list(arrays["layer_names"]) == ["block.0", "block.1", "block.2"]
    assert sorted(p.name for p in (out / "figures").glob("*.png")) == [
        "thermo_heat_curves.png", "thermo_heatmaps.png", "thermo_positional.png"]

    for figure in (out / "figures").glob("*.png"):
        figure.unlink()
    assert main(args) == 0  # resumed: nothing recomputed, the figures redrawn from thermo.npz
    assert f"[resume] thermo/{entry['run']}" in capsys.readouterr().err
    assert json.loads((out / "results.json").read_text())["runs"] == [entry]
    assert len(list((out / "figures").glob("*.png"))) == 3


def test_bad_conventions_fail_before_any_model_loads(tmp_path, tiny_dir, capsys):
    args = ["thermo", "--model", f"random:{tiny_dir}", *FAST, "--out", str(tmp_path / "t")]
    assert main([*args, "--skip-query-positions", "-1"]) == 2
    assert "--skip-query-positions" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_numbers_equal_the_thermodynamics_of_scores_captured_by_hand(tmp_path, tokenizer):
    model = tiny_model("llama", seed=3)
    loaded = ll.load_model(model, tokenizer=tokenizer)
    out = tmp_path / "t"
    cfg = thermo.ThermoConfig(
        run=RunConfig(models=[loaded], n_prompts=1, device="cpu", out=str(out)),
        trajectories=TrajectoryConfig(trajectory="teacher-forced", context_tokens=4, new_tokens=12),
        bootstrap=BootstrapConfig(n_bootstrap=0))
    (entry,) = thermo.run_thermo(cfg, progress=False)
    (trajectory,) = load_trajectories(out / entry["run"] / "trajectories")
    tokens = trajectory.token_ids[:trajectory.n_positions]  # the T positions the trajectory's states cover
    (cap,) = capture_attention(model, tokens)
    assert count_hooks(model) == 0
    th = attention_thermo(cap.scores, cap.visible[:, None])  # per row (L, H, T), the model's own softmax
    rows = slice(1, None)  # skip_query_positions = 1: query 0 sees only itself
    m = entry["metrics"]
    for q, values in (("energy", th.U), ("entropy", th.S), ("free_energy", th.F), ("specific_heat", th.C)):
        per_head = values[..., rows].mean(-1).numpy()  # (L, H)
        assert_allclose(m[f"per_head_{q}"]["value"], per_head, rtol=1e-9, atol=1e-12)
        assert_allclose(m[f"per_layer_{q}"]["value"], per_head.mean(-1), rtol=1e-9, atol=1e-12)
        assert_allclose(m[f"mean_{q}"]["value"], per_head.mean(), rtol=1e-9, atol=1e-12)
    p = torch.softmax(cap.scores.double().masked_fill(~cap.visible[:, None], -torch.inf), -1)  # (L, H, T, T)
    assert_allclose(m["per_head_sink_mass"]["value"], p[..., rows, 0].mean(-1).numpy(), rtol=1e-9)
    assert m["n_ensembles"] == L * H * (len(tokens) - 1)


def test_captures_stream_batch_by_batch_and_equal_each_sequence_alone(tokenizer, monkeypatch):
    model = tiny_model("llama", seed=4)
    trajectories = ll.extract(model, tokenizer, TEXTS)
    batches = []  # the rows of every batch captured so far
    capture = attention.capture_attention
    monkeypatch.setattr(attention, "capture_attention",
                        lambda m, ids, *a, **kw: batches.append(len(ids)) or capture(m, ids, *a, **kw))
    captures = attention.iter_captures(model, trajectories, batch_size=2)
    assert batches == []  # nothing is captured before the analysis asks
    first = next(captures)
    assert batches == [2]  # the second batch waits until the first is consumed
    streamed = [first, *captures]
    assert batches == [2, 1] and count_hooks(model) == 0
    for cap, t in zip(streamed, trajectories, strict=True):
        (alone,) = capture(model, t.token_ids[:t.n_positions])
        assert torch.equal(cap.token_ids, alone.token_ids) and cap.layer_names == ("block.0", "block.1", "block.2")
        assert_close(cap.scores, alone.scores, atol=1e-5, rtol=1e-5)


def test_random_twin_replicates_reproduce_the_intervals_and_separate(tmp_path, tokenizer):
    loaded = ll.load_model(tiny_model("llama", seed=5), tokenizer=tokenizer)
    out = tmp_path / "t"
    cfg = thermo.ThermoConfig(run=RunConfig(models=[loaded], random_twins=True, n_prompts=4, device="cpu",
                                            out=str(out)),
                              trajectories=TrajectoryConfig(new_tokens=4), bootstrap=BootstrapConfig(n_bootstrap=50))
    pre, rnd = thermo.run_thermo(cfg, progress=False)
    assert (pre["weights"], rnd["weights"]) == ("pretrained", "random")
    for e in (pre, rnd):
        saved = load_replicates(out / e["run"])
        assert set(saved) == {f"mean_{q}" for q in QUANTITIES}
        for name, parts in saved.items():
            assert parts["draws"].shape == (50,) and parts["units"].shape == (4,)
            # The draws are the analysis's own resamples: their percentiles are its interval.
            low, high = np.quantile(parts["draws"], [0.025, 0.975])
            assert_allclose([low, high], [e["metrics"][name]["ci_low"], e["metrics"][name]["ci_high"]], rtol=1e-9)
    (block,) = json.loads((out / "results.json").read_text())["separation"]
    assert (block["pretrained"], block["random"]) == (pre["run"], rnd["run"])
    assert set(block["metrics"]) == {f"mean_{q}" for q in QUANTITIES}
    section = report_section(out, [pre, rnd])
    assert section.paragraphs[0].startswith("As a share of its maximum ln n")
    (metrics,) = [t.rows for t in section.tables if t.rows[0][0] == "metric"]
    assert metrics[0][-1].startswith("pretrained − random") and metrics[1][-1] != "-"


def test_report_section_defines_every_printed_metric_and_tabulates_layers(tmp_path):
    per_layer = {f"per_layer_{q}": {"value": [0.5, 0.25], "ci_low": [0.4, 0.2], "ci_high": [0.6, 0.3]}
                 for q in ("entropy", "specific_heat", "sink_mass")}
    entry = {"run": "m__pretrained", "model": "m", "weights": "pretrained", "conventions": {"sink_positions": [0]},
             "metrics": {**per_layer, "mean_normalized_entropy": {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6},
                         "mean_sink_mass": {"value": 0.25, "ci_low": 0.2, "ci_high": 0.3}}}
    section = report_section(tmp_path, [entry])
    (metrics,) = [t.rows for t in section.tables if t.rows[0][0] == "metric"]
    (definitions,) = [t.rows for t in section.tables if t.caption == "Definitions"]
    printed = [r[0] for r in metrics[1:]]
    assert printed == list(HEADLINE + DETAIL) and undefined(printed, definitions) == []
    (layers,) = [t.rows for t in section.tables if t.caption.startswith("Per layer")]
    assert layers[1] == ["0", "0.5 [0.4, 0.6]", "0.5 [0.4, 0.6]", "0.5 [0.4, 0.6]"]
    assert layers[2][0] == "1" and len(layers) == 3
    assert section.paragraphs[0] == ("As a share of its maximum ln n (n the keys a query sees), attention entropy "
                                     "averages 50 % for the pretrained model. The share of a query's attention on "
                                     "the first token (the sink view) averages 25 % for the pretrained model.")


@pytest.mark.parametrize("bad", [dict(sinks="exclude", sink_positions=()), dict(temperatures=(1.0, 2.0))])
def test_config_validates_its_conventions(bad):
    with pytest.raises(ConfigError):
        thermo.ThermoConfig(conventions=thermo.ThermoConventions(**bad))


@pytest.mark.parametrize("name", log_probability_models())
def test_models_with_inline_attention_are_analysed_from_their_log_probabilities(name, tmp_path, tokenizer):
    model = table_model(name, initializer_range=0.5)  # peaked heads: their entropies differ
    loaded = ll.load_model(model, tokenizer=tokenizer)
    out = tmp_path / "t"
    cfg = thermo.ThermoConfig(run=RunConfig(models=[loaded], n_prompts=2, device="cpu", out=str(out)),
                              trajectories=TrajectoryConfig(new_tokens=6), bootstrap=BootstrapConfig(n_bootstrap=10))
    thermo.run_thermo(cfg, progress=False)
    (entry,) = json.loads((out / "results.json").read_text())["runs"]  # as written: NaN is null
    m, n_layers, n_heads = entry["metrics"], 2, 4
    # S and C per head: finite, and equal to those of the model's own attention weights, pooled by hand.
    rows = []  # per trajectory: S and C of every (layer, head, query >= 1) row, (L, H, T - 1)
    # Eager: under sdpa transformers may build a boolean mask, which inline scores would add as 0/1.
    model.config._attn_implementation_internal = "eager"
    for t in load_trajectories(out / entry["run"] / "trajectories"):
        tokens = t.token_ids[:t.n_positions]
        with torch.no_grad():
            p = torch.stack(model(input_ids=tokens[None], output_attentions=True).attentions)[:, 0].double()
        log_p = torch.where(p > 0, p.log(), 0.0)
        energy = -log_p - (-(p * log_p).sum(-1, keepdim=True))  # E − U up to the row's constant: Var needs no more
        rows.append((-(p * log_p).sum(-1)[..., 1:], (p * energy.square()).sum(-1)[..., 1:]))
    for q, i in (("entropy", 0), ("specific_heat", 1)):
        by_hand = torch.cat([r[i] for r in rows], -1).mean(-1).numpy()  # (L, H)
        assert np.isfinite(by_hand).all() and by_hand.shape == (n_layers, n_heads)
        assert_allclose(m[f"per_head_{q}"]["value"], by_hand, rtol=1e-5, atol=1e-7)
    assert np.ptp(m["per_head_entropy"]["value"]) > 0.05
    for q in ("energy", "free_energy"):  # not identified: null, with the reason, and no replicates
        assert m[f"mean_{q}"] == {"value": None, "ci_low": None, "ci_high": None}
        assert m[f"per_head_{q}"]["value"] == [[None] * n_heads] * n_layers
    assert set(m["not_identified"]) == {"U", "F", "energy_by_key_distance"}
    assert entry["conventions"]["capture"].startswith("log-probabilities via output_attentions; U and F not identified")
    assert set(load_replicates(out / entry["run"])) == {f"mean_{q}" for q in QUANTITIES} - {"mean_energy",
                                                                                            "mean_free_energy"}
    arrays = np.load(out / entry["run"] / ARRAYS_FILE)
    assert np.isnan(arrays["by_key_distance.energy"]).all() and np.isfinite(arrays["by_key_distance.mass"]).any()
    assert len(list((out / "figures").glob("thermo_*.png"))) == 3
    assert count_hooks(model) == 0
