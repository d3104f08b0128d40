"""The monitor command end to end on a tiny random model: every AUROC, TPR and FPR in results.json follows from the
scores on disk, the saved monitors load back with identical scores, a re-run reuses the cached features without a
forward pass, a changed setting recomputes only the sets it changes, bad options fail before any model loads, and
the report takes the finished folder. The evaluation's arithmetic is checked on known answers."""
import itertools
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from lagrangian_lens.analysis.monitor import FeatureTable, auroc, tpr_at_fpr
from lagrangian_lens.analysis.monitor_stream import ChangePointMonitor
from lagrangian_lens.cli import main
from lagrangian_lens.errors import ConfigError, DataError
from lagrangian_lens.experiments import monitor as experiment
from lagrangian_lens.experiments.monitor import ANOMALIES, MonitorConfig, TextSet, load_monitor, run_monitor
from lagrangian_lens.experiments.monitor_eval import (
    HIGHER,
    LOWER,
    STREAM_KINDS,
    TRACE_OF,
    UNCLEAR,
    alarm_token,
    localisation,
    paired_auroc_difference,
    verdict,
    worst_prefixes,
)
from lagrangian_lens.trajectories import count_hooks

SIZES = dict(n_calibration=16, n_heldout=8, n_test=8, n_anomalies=6, tokens=40, min_prefix_tokens=8,
             n_bootstrap=50, batch_size=8, device="cpu")
FLAGS = ["--n-calibration", "16", "--n-heldout", "8", "--n-test", "8", "--n-anomalies", "6", "--tokens", "40",
         "--min-prefix-tokens", "8", "--n-bootstrap", "50", "--batch-size", "8", "--device", "cpu", "--quiet"]
SETS = ("energy", "perplexity", "streaming")
METHODS = ("mahalanobis", "isolation-forest", "gaussian-mixture")


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_dir):
    out = tmp_path_factory.mktemp("monitor") / "run"
    cfg = MonitorConfig(models=[f"random:{tiny_dir}"], evaluate=True, out=str(out), **SIZES)
    results = run_monitor(cfg, progress=False)
    (run,) = results["models"]
    return out, cfg, run


def _results(out):
    return json.loads((out / "results.json").read_text())


def test_every_number_follows_from_the_scores_on_disk(evaluated):
    out, cfg, run = evaluated
    results = _results(out)
    assert results["complete"] and results["anomalies"] == list(ANOMALIES)
    evaluation = results["models"][run]["evaluation"]
    scores = json.loads((out / "scores" / f"{run}.json").read_text())
    table = {(r["anomaly"], r["feature_set"], r["method"]): r for r in evaluation["table"]}
    assert set(table) == set(itertools.product(ANOMALIES, SETS, METHODS))
    for (kind, fs, m), row in table.items():
        normal, anomalous = (np.array(scores["sets"][fs][m][k]) for k in ("test", kind))
        threshold = scores["thresholds"][fs][m]
        assert len(normal) == 8 and len(anomalous) == row["n"] == 6
        assert row["auroc"] == auroc(normal, anomalous)
        assert row["tpr_at_fpr"] == tpr_at_fpr(normal, anomalous, fpr=0.05)
        np.testing.assert_allclose(row["tpr_calibrated"], np.mean(anomalous > threshold), rtol=0, atol=0)
    for r in evaluation["monitors"]:
        normal = np.array(scores["sets"][r["feature_set"]][r["method"]]["test"])
        assert r["realised_fpr"] == np.mean(normal > r["threshold"])
    # The perplexity baseline beside every other set, per type and method.
    comparison = {(r["anomaly"], r["feature_set"], r["method"]): r for r in evaluation["comparison"]}
    assert set(comparison) == set(itertools.product(ANOMALIES, ("energy", "streaming"), METHODS))
    for (kind, fs, m), r in comparison.items():
        np.testing.assert_allclose(r["difference"], table[kind, fs, m]["auroc"] - table[kind, "perplexity", m]["auroc"],
                                   rtol=0, atol=1e-12)
        assert r["verdict"] == verdict(r) and r["ci_low"] <= r["ci_high"]


def _traces(out, run, name):
    (path,) = (out / "features" / run).glob(f"{name}-*.safetensors")
    return experiment._read_features(path, name)[1]


def test_splices_are_localised_token_by_token(evaluated, tokenizer):
    out, _, run = evaluated
    entry = _results(out)["models"][run]
    evaluation = entry["evaluation"]
    scores = json.loads((out / "scores" / f"{run}.json").read_text())
    # Streaming features only: the perplexity set (mean_V streams) and the streaming set localise; energy does not.
    rows = {(r["kind"], r["feature_set"], r["method"]): r for r in evaluation["localisation"]}
    assert set(rows) == set(itertools.product(STREAM_KINDS, ("perplexity", "streaming"), METHODS))
    traces = {name: _traces(out, run, name) for name in ("heldout", "test", "spliced")}
    splices = scores["splice_tokens"]
    for saved in (m for m in entry["monitors"] if m["kind"] != "sequence"):
        kind, r = saved["kind"], rows[saved["kind"], saved["feature_set"], saved["method"]]
        monitor = load_monitor(out / saved["file"])
        held, test, spliced = (traces[name][TRACE_OF[kind]] for name in ("heldout", "test", "spliced"))
        # Each threshold is the calibration on one row per held-out trace, its worst (CUSUM: its peak statistic).
        if kind == "cusum":
            assert isinstance(monitor, ChangePointMonitor)
            assert monitor.calibrate(held).threshold_ == saved["threshold"]
        else:
            assert monitor.calibrate(worst_prefixes(monitor, held)).threshold_ == saved["threshold"]
        first = [alarm_token(monitor.first_alarm(p), 8) for p in spliced]
        changes = [alarm_token(monitor.change_point(p), 8) for p in spliced] if kind == "cusum" else None
        spans = [(7, 6 + len(p)) for p in spliced]
        expected = localisation(first, splices, [alarm_token(monitor.first_alarm(p), 8) for p in test],
                                changes=changes, spans=spans)
        assert {k: r[k] for k in expected} == expected and r["n"] == 6
        assert r["detected"] + r["early"] == pytest.approx(r["alarmed"], abs=1e-12)
        peaks = [np.array([monitor.anomaly_score(p).max() for p in t]) for t in (test, spliced)]
        assert r["auroc"] == auroc(*peaks)
    saved = json.loads(next((out / "features" / run).glob("sets-*.json")).read_text())
    ids = saved["sets"]["spliced"]["ids"]
    assert saved["sets"]["spliced"]["splice_tokens"] == splices and all(8 <= k < len(x) for k, x in zip(splices, ids))
    head, tail = tokenizer.decode(ids[0][:splices[0]]), tokenizer.decode(ids[0][splices[0]:])
    assert saved["examples"]["spliced"] == f"{head} {experiment.SPLICE_MARK} {tail}"
    for kind in STREAM_KINDS:
        trace = scores["traces"][kind]["streaming"]["mahalanobis"]
        assert trace["tokens"] == list(range(7, len(ids[0])))  # the prefix of t tokens ends at token t - 1
        above = [t for t, s in zip(trace["tokens"], trace["scores"]) if s > trace["threshold"]]
        assert trace["first_alarm"] == (above[0] if above else None)
        assert (trace["change_point"] is not None) == (kind == "cusum" and trace["first_alarm"] is not None)


def test_saved_monitors_load_back_with_identical_scores(evaluated):
    out, _, run = evaluated
    entry = _results(out)["models"][run]
    scores = json.loads((out / "scores" / f"{run}.json").read_text())
    (features,) = (out / "features" / run).glob("test-*.safetensors")
    table, _ = experiment._read_features(features, "test")
    kinds = {(m["feature_set"], m["method"], m["kind"]) for m in entry["monitors"]}
    assert kinds == {*itertools.product(SETS, METHODS, ["sequence"]),
                     *itertools.product(("perplexity", "streaming"), METHODS, STREAM_KINDS)}
    for saved in entry["monitors"]:
        monitor = load_monitor(out / saved["file"])
        assert monitor.threshold_ == saved["threshold"]
        if saved["kind"] == "sequence":
            np.testing.assert_array_equal(monitor.anomaly_score(table),
                                          scores["sets"][saved["feature_set"]][saved["method"]]["test"])
    assert not list(out.rglob("*.pkl")) and not list(out.rglob("*.pickle"))


def test_figures_are_written_as_png_and_svg(evaluated):
    out, _, run = evaluated
    for name in ("monitor_roc", "monitor_scores", "monitor_trace"):
        assert (out / "figures" / f"{name}-{run}.png").is_file() and (out / "figures" / f"{name}-{run}.svg").is_file()


def test_a_rerun_reuses_the_cached_features_without_a_forward_pass(evaluated, monkeypatch, capsys):
    out, cfg, run = evaluated
    before = _results(out)["models"][run]
    files = {p: p.stat().st_mtime_ns for p in (out / "features").rglob("*") if p.is_file()}

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded although every set's features are cached")

    monkeypatch.setattr(experiment, "load_model", no_model)
    after = run_monitor(cfg, progress=False)["models"][run]
    assert after["evaluation"] == before["evaluation"] and after["monitors"] == before["monitors"]
    assert after["model_description"] == before["model_description"]
    assert {p: p.stat().st_mtime_ns for p in (out / "features").rglob("*") if p.is_file()} == files
    assert capsys.readouterr().err.count("[resume] monitor: features of") == 3 + len(ANOMALIES)
    # Each feature file records the package versions that computed it.
    with safe_open(str(next((out / "features" / run).glob("test-*.safetensors"))), "np") as f:
        assert json.loads(f.metadata()["meta"])["packages"]["torch"] == torch.__version__


def test_a_changed_setting_recomputes_only_the_sets_it_changes(evaluated, tmp_path, monkeypatch):
    import shutil

    out, cfg, run = evaluated
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    loads = []
    real = experiment.load_model
    monkeypatch.setattr(experiment, "load_model", lambda *a, **k: loads.append(a) or real(*a, **k))
    before = {p.name for p in (copy / "features" / run).iterdir()}
    changed = MonitorConfig(**{**vars(cfg), "out": str(copy), "min_prefix_tokens": 10})  # the traces only
    run_monitor(changed, progress=False)
    new = {p.name for p in (copy / "features" / run).iterdir()} - before
    # Every in-distribution set carries traces (the window monitors are fitted on the calibration set's).
    assert len(loads) == 1 and sorted(n.split("-")[0] for n in new) == ["calibration", "heldout", "spliced", "test"]


def test_bad_options_fail_before_a_model_loads(tmp_path, tiny_dir, monkeypatch, capsys):
    monkeypatch.setattr(experiment, "load_model", lambda *a, **k: pytest.fail("a model loaded"))
    for bad, message in ((["--methods", "knn"], "--methods: 'knn' is not one of mahalanobis"),
                         (["--feature-sets", "energy", "--feature-sets", "pixels"], "--feature-sets: 'pixels'"),
                         (["--target-fpr", "1.5"], "--target-fpr: must be > 0 and < 1, got 1.5"),
                         (["--tokens", "20"], "--tokens: 20 tokens leave no trace before a splice"),
                         (["--methods", "mahalanobis", "--methods", "mahalanobis"], "--methods: ['mahalanobis', 'mahalanobis'] repeats"),
                         (["--feature-sets", "heat"], "--feature-sets: ['heat'] hold only the specific heat: add "
                                                      "--specific-heat"),
                         (["--stream-window", "1"], "--stream-window: must be >= 2")):
        code = main(["monitor", "--model", f"random:{tiny_dir}", *bad, "--out", str(tmp_path / "m")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {message}"), err
    assert not (tmp_path / "m").exists()


def test_the_cli_evaluates_and_the_report_takes_the_folder(tmp_path, tiny_dir, capsys):
    out = tmp_path / "cli"
    assert main(["monitor", "--model", f"random:{tiny_dir}", "--evaluate", *FLAGS, "--methods", "mahalanobis",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "shuffled" in printed and "energy beats the baseline on" in printed.lower() and "results:" in printed
    results = _results(out)
    # 3 sequence monitors, and 3 stream kinds for each of the 2 streaming sets.
    assert results["methods"] == ["mahalanobis"] and len(next(iter(results["models"].values()))["monitors"]) == 9
    report = tmp_path / "report"
    assert main(["report", "--model", f"random:{tiny_dir}", "--no-random-twins", "--n-prompts", "2",
                 "--new-tokens", "5", "--n-bootstrap", "10", "--n-permutations", "5", "--monitor", str(out),
                 "--device", "cpu", "--quiet", "--out", str(report)]) == 0
    html = (report / "report.html").read_text()
    assert "Energy anomaly monitor" in html and "perplexity baseline" in html


def test_without_evaluate_the_monitors_are_fitted_calibrated_and_saved_only(tmp_path, tiny_dir):
    cfg = MonitorConfig(models=[f"random:{tiny_dir}"], out=str(tmp_path / "fit"), methods=["mahalanobis"],
                        feature_sets=["energy"], **{k: v for k, v in SIZES.items()})
    results = run_monitor(cfg, progress=False)
    (entry,) = results["models"].values()
    assert "evaluation" not in entry and results["anomalies"] == []
    names = sorted(p.name.split("-")[0] for p in (tmp_path / "fit" / "features" / entry["run"]).glob("*.safetensors"))
    assert names == ["calibration", "heldout"]
    assert load_monitor(tmp_path / "fit" / entry["monitors"][0]["file"]).threshold_ == entry["monitors"][0]["threshold"]
    assert not (tmp_path / "fit" / "figures").exists()


def test_too_few_paragraphs_is_a_data_error_naming_the_fix(tmp_path, tiny_dir):
    cfg = MonitorConfig(models=[f"random:{tiny_dir}"], out=str(tmp_path / "big"), **{**SIZES, "n_calibration": 600})
    with pytest.raises(DataError, match=r"paragraphs of at least 40 tokens, 622 needed .* ask for fewer or shorter"):
        run_monitor(cfg, progress=False)


def test_the_features_pass_leaves_no_hook(tiny_dir):
    from lagrangian_lens.models import load_model

    lm = load_model(f"random:{tiny_dir}")
    cfg = MonitorConfig(models=[f"random:{tiny_dir}"], **SIZES)
    ids = lm.tokenizer("The castle was built in the twelfth century by the counts of the region.")["input_ids"]
    table, traces = experiment.compute_features(lm, TextSet("x", [ids, ids[:12]], prefixes=True), cfg, False)
    assert table.values.shape[0] == 2 and table.labels == ("x", "x")
    for kind in ("prefix", "window"):
        assert [len(p) for p in traces[kind]] == [len(ids) - 8 + 1, 12 - 8 + 1]  # prefixes of t = 8 .. T tokens
    # The whole sequence's prefix is the sequence: the trace and the table read the same pass and conventions.
    for row, trace in enumerate(traces["prefix"]):
        np.testing.assert_allclose(trace.values[-1], table.select(trace.names).values[row], rtol=1e-9, atol=1e-12)
    # A window of stream_window = 8 steps is its whole prefix while the prefix holds <= 8 steps (t <= 10 tokens,
    # rows 0-2), and differs once the prefix is longer.
    window, prefix = traces["window"][0].values, traces["prefix"][0].values
    np.testing.assert_allclose(window[:3], prefix[:3], rtol=1e-12, atol=0)
    assert not np.isclose(window[3:], prefix[3:], rtol=1e-9, atol=0).all(axis=1).any()
    assert count_hooks(lm.model) == 0


def test_worst_prefixes_picks_each_traces_most_anomalous_row():
    class Distance:  # anomaly score: the first feature
        def anomaly_score(self, table):
            return table.values[:, 0]

    traces = [FeatureTable(np.array([[1.0, 10], [3.0, 30], [2.0, 20]]), ("mean_V", "mean_K")),
              FeatureTable(np.array([[5.0, 50], [4.0, 40]]), ("mean_V", "mean_K"))]
    worst = worst_prefixes(Distance(), traces)
    assert worst.names == ("mean_V", "mean_K")
    np.testing.assert_array_equal(worst.values, [[3.0, 30], [5.0, 50]])


def test_text_sets_validate_their_sequences():
    with pytest.raises(DataError, match="the shuffled set is empty"):
        TextSet("shuffled", [])
    with pytest.raises(DataError, match=r"sequences \[1\] hold fewer than 3 tokens"):
        TextSet("test", [[1, 2, 3], [1, 2]])
    with pytest.raises(DataError, match="2 sequences but 1 splices"):
        TextSet("spliced", [[1, 2, 3], [1, 2, 3]], splice_tokens=[1])
    with pytest.raises(ConfigError, match="n_anomalies: must be >= 2"):
        MonitorConfig(n_anomalies=1)


def test_auroc_differences_on_known_answers():
    normal, above, below = np.arange(5.0), np.arange(5.0) + 10, np.arange(5.0) - 10
    # Perfectly separated against perfectly reversed: AUROC 1 and 0 in every resample.
    d = paired_auroc_difference(normal, above, normal, below, n_boot=200, seed=0)
    assert (d["auroc"], d["baseline_auroc"], d["difference"], d["ci_low"], d["ci_high"]) == (1.0, 0.0, 1.0, 1.0, 1.0)
    assert verdict(d) == HIGHER
    same = paired_auroc_difference(normal, normal + 0.5, normal, normal + 0.5, n_boot=200, seed=0)
    assert (same["difference"], same["ci_low"], same["ci_high"]) == (0.0, 0.0, 0.0) and verdict(same) == UNCLEAR
    point = paired_auroc_difference(normal, below, normal, above, n_boot=0, seed=0)
    assert point["ci_low"] is None and point["difference"] == -1.0 and verdict(point) == LOWER
    # Ties count one half: [0, 1] against [1, 2] wins 3 of 4 pairs outright and ties one.
    tie = paired_auroc_difference(np.array([0.0, 1.0]), np.array([1.0, 2.0]), normal, above, n_boot=0, seed=0)
    assert tie["auroc"] == 0.875


def test_localisation_on_known_answers():
    assert alarm_token(0, 8) == 7 and alarm_token(None, 8) is None
    r = localisation([None, 10, 20, 5], [12, 12, 12, 12], [None, 3])
    assert r == {"n": 4, "alarmed": 0.75, "detected": 0.25, "early": 0.5, "median_abs_error": 7.0,
                 "median_delay": 8.0, "normal_alarmed": 0.5}
    # Change points 12, 13, 4 of the alarmed sequences err by 0, 1, 8; a uniform guess over tokens 10..14 errs by
    # (2 + 1 + 0 + 1 + 2) / 5 = 1.2 on each (the median over the alarmed ones).
    r = localisation([None, 10, 20, 5], [12] * 4, [None], changes=[None, 12, 13, 4], spans=[(10, 14)] * 4)
    assert r["median_abs_change_error"] == 1.0 and r["chance_abs_error"] == pytest.approx(1.2, abs=1e-12)
    none = localisation([None, None], [9, 9], [None])
    assert none["median_abs_error"] is None and none["median_delay"] is None and none["detected"] == 0.0


def test_the_roc_curve_encloses_the_auroc():
    from lagrangian_lens.experiments.monitor_report import roc_curve

    fpr, tpr = roc_curve(np.array([0.0, 1.0]), np.array([1.0, 2.0]))
    np.testing.assert_array_equal(fpr, [0, 0, 0.5, 1])
    np.testing.assert_array_equal(tpr, [0, 0.5, 1, 1])
    rng = np.random.default_rng(0)
    normal, anomalous = rng.integers(0, 5, 30).astype(float), rng.integers(1, 6, 20).astype(float)  # with ties
    fpr, tpr = roc_curve(normal, anomalous)
    np.testing.assert_allclose(np.trapezoid(tpr, fpr), auroc(normal, anomalous), rtol=1e-12)


def test_the_sentences_follow_the_verdicts():
    from lagrangian_lens.experiments.monitor_report import comparison_sentences

    def row(kind, auroc_, base, low, high):
        return {"anomaly": kind, "feature_set": "energy", "method": "mahalanobis", "auroc": auroc_,
                "baseline_auroc": base, "difference": auroc_ - base, "ci_low": low, "ci_high": high, "ci": 0.95,
                "verdict": verdict({"difference": auroc_ - base, "ci_low": low, "ci_high": high})}

    entry = {"model": "m", "evaluation": {"best_method": "mahalanobis", "comparison": [
        row("shuffled", 0.9, 0.7, 0.1, 0.3), row("spliced", 0.5, 0.8, -0.4, -0.2),
        row("tinystories", 0.8, 0.75, -0.1, 0.2)]}}
    text = comparison_sentences({"feature_sets": {"energy": [], "perplexity": []}}, entry)
    assert text[1] == "shuffled: energy beats perplexity (AUROC 0.9 against 0.7, +0.200 [+0.100, +0.300])."
    assert text[2].startswith("spliced: energy does not beat perplexity, which is higher (AUROC 0.5 against 0.8")
    assert text[3].startswith("tinystories: no clear difference")
    assert text[-1] == "Energy beats the baseline on 1 of 3 anomaly types."


def test_specific_heat_is_each_sequences_attention_heat_and_joins_the_heat_and_all_sets(tmp_path, tiny_dir):
    from lagrangian_lens.analysis.thermo import ThermoConventions, sequence_specific_heat
    from lagrangian_lens.models import load_model
    from lagrangian_lens.trajectories.attention import capture_attention

    cfg = MonitorConfig(models=[f"random:{tiny_dir}"], out=str(tmp_path / "heat"), methods=["mahalanobis"],
                        feature_sets=["heat", "all", "energy"], specific_heat=True,
                        thermo=ThermoConventions(skip_query_positions=2), **SIZES)
    results = run_monitor(cfg, progress=False)
    (entry,) = results["models"].values()
    assert results["feature_sets"]["heat"] == ["specific_heat"] and "specific_heat" in results["feature_sets"]["all"]
    assert "specific_heat" not in results["feature_sets"]["energy"]
    assert results["conventions"]["thermo_skip_query_positions"] == 2
    by_set = {m["feature_set"]: m for m in entry["monitors"]}
    assert by_set["heat"]["features"] == ["specific_heat"] and load_monitor(
        tmp_path / "heat" / by_set["all"]["file"]).feature_names_[-1] == "specific_heat"
    saved = json.loads(next((tmp_path / "heat" / "features" / entry["run"]).glob("sets-*.json")).read_text())
    (path,) = (tmp_path / "heat" / "features" / entry["run"]).glob("heldout-*.safetensors")
    table, _ = experiment._read_features(path, "heldout")
    lm = load_model(f"random:{tiny_dir}")
    expected = [sequence_specific_heat(capture_attention(lm.model, torch.tensor(ids[:-1]))[0], cfg.thermo)
                for ids in saved["sets"]["heldout"]["ids"]]  # the positions a trajectory holds: all tokens but the last
    np.testing.assert_allclose(table.select(("specific_heat",)).values[:, 0], expected, rtol=1e-5, atol=1e-7)


def test_a_model_is_compared_with_its_random_twin_on_the_same_sequences(tmp_path, tokenizer):
    from lagrangian_lens.experiments.monitor_report import twin_rows

    from .conftest import tiny_model

    trained_dir = tmp_path / "tiny-trained"  # a model with weights of its own (a stand-in for trained ones)
    tiny_model("llama", seed=7).save_pretrained(trained_dir)
    tokenizer.save_pretrained(trained_dir)
    out = tmp_path / "twins"
    cfg = MonitorConfig(models=[str(trained_dir), f"random:{trained_dir}"], out=str(out), methods=["mahalanobis"],
                        feature_sets=["energy", "perplexity"], evaluate=True, **SIZES)
    results = run_monitor(cfg, progress=False)
    trained, twin = results["models"]
    (pair,) = results["twins"]
    assert (pair["trained"], pair["twin"]) == (trained, twin)
    sets = [json.loads(next((out / "features" / run).glob("sets-*.json")).read_text())["sets"] for run in (trained, twin)]
    assert sets[0] == sets[1]  # one tokenizer: the same token ids, so the comparison is paired
    scores = [json.loads((out / "scores" / f"{run}.json").read_text())["sets"] for run in (trained, twin)]
    rows = {(r["feature_set"], r["anomaly"]): r for r in pair["comparison"]}
    assert set(rows) == set(itertools.product(("energy", "perplexity"), ANOMALIES))
    for (fs, kind), r in rows.items():
        a, b = (s[fs]["mahalanobis"] for s in scores)
        expected = paired_auroc_difference(np.array(a["test"]), np.array(a[kind]), np.array(b["test"]),
                                           np.array(b[kind]), n_boot=50, seed=0)
        assert {k: r[k] for k in expected} == expected and r["verdict"] == verdict(expected)
    table = twin_rows(results)
    assert len(table) == 1 + len(rows) and table[0][-1] == "separates"
