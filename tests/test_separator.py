"""The separator experiment end to end on tiny models: its results, its oracle, and stage caches keyed by exactly
what each stage reads (a changed setting is recomputed, an unchanged one is kept, a wrong checkpoint refused)."""
import json
import shutil

import numpy as np
import pytest

import lagrangian_lens.experiments.separator as sep
from lagrangian_lens.cli import main

SMALL = ["--d-model", "16", "--n-steps", "3", "--v-hidden", "128", "--max-steps", "10", "--n-sentences", "6", "--sentence-tokens", "12",
         "--widths", "4", "--width", "8", "--max-epochs", "4", "--symmetry-k", "4", "--no-menu", "--device", "cpu",
         "--quiet"]


def refuse(what):
    def fail(*args, **kwargs):
        raise AssertionError(f"{what} was redone although nothing it reads changed")
    return fail


def test_separator_caches_each_stage_under_the_settings_it_reads(tmp_path, tiny_dir, monkeypatch, capsys):
    out = tmp_path / "sep"
    args = ["separator", "--model", f"random:{tiny_dir}", *SMALL, "--out", str(out)]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["models"]) == {"splm", "gpt", "pretrained"}
    splm = results["models"]["splm"]
    for name in ("r2_centered", "r2_uncentered", "force_r2"):
        assert len(splm["fit"][name]["per_layer"]) == 3 - 1  # 3 SPLM steps: 4 states, 2 fit layers
    assert len(splm["token_axis"]["fit"]["r2_centered"]["per_layer"]) == 3 + 1  # along tokens: every state
    np.testing.assert_allclose(splm["static_null"]["r2_uncentered"]["per_layer"], 0.0, atol=1e-12)
    np.testing.assert_allclose(splm["velocity_only"]["force_r2"]["per_layer"], 0.0, atol=1e-9)
    assert set(splm["position_zero"]) == {"with_position_0", "without_position_0"}
    assert splm["final_norm_gain"] is None  # a plain SPLM's read-out sees h_L itself
    np.testing.assert_allclose(results["models"]["gpt"]["final_norm_gain"]["mean"], 1.0, atol=0.05)  # ln_f, ~init
    for name in ("r2_centered", "r2_uncentered"):
        np.testing.assert_allclose(results["oracle"]["splm"][name]["per_layer"], 1.0, atol=1e-4)
    conventions = results["conventions"]
    assert conventions["centering"] == "sequence" and conventions["headline"] == "r2_centered"
    assert set(conventions["r2_definitions"]) == {"r2_centered", "r2_uncentered"}
    assert conventions["fit_version"] == sep.FIT_VERSION and conventions["symmetry"] == "pooled"
    assert results["sources"]["splm"]["weights_sha256"] and results["sources"]["pretrained"]["spec"]
    run = json.loads((out / "run.json").read_text())
    assert run["experiment"] == "separator" and run["sources"] == results["sources"]

    with monkeypatch.context() as m:  # an identical rerun trains and fits nothing
        m.setattr(sep, "analyse_potential", refuse("a fit"))
        m.setattr(sep, "train", refuse("training"))
        assert main(args) == 0

    with monkeypatch.context() as m:  # a new V_ψ width refits, and keeps the trained models and the depth data
        m.setattr(sep, "train", refuse("training"))
        m.setattr(sep, "extract", refuse("extraction"))
        assert main([*args, "--width", "12"]) == 0
    wider = json.loads((out / "results.json").read_text())
    assert wider["models"]["gpt"]["fit"]["n_params"] != results["models"]["gpt"]["fit"]["n_params"]

    with monkeypatch.context() as m:  # a fit cached by an older version of the fits is redone, never reused
        m.setattr(sep, "FIT_VERSION", sep.FIT_VERSION + 1)
        m.setattr(sep, "analyse_potential", refuse("a fit"))
        with pytest.raises(AssertionError, match="a fit was redone"):
            main(args)

    with monkeypatch.context() as m:  # new centring and symmetry settings refit, on the same models and data
        m.setattr(sep, "train", refuse("training"))
        m.setattr(sep, "extract", refuse("extraction"))
        assert main([*args, "--centering", "sequence-layer", "--symmetry", "both"]) == 0
    both = json.loads((out / "results.json").read_text())
    assert both["conventions"]["centering"] == "sequence-layer"
    for r in both["models"].values():
        assert len(r["symmetry_per_layer"]["gap"]) == len(r["fit"]["r2_centered"]["per_layer"])
        assert set(r["symmetry"]) >= {"gap", "gap_uncentered"} and "symmetry_per_layer" in r["token_axis"]

    trained = []
    real_train = sep.train
    monkeypatch.setattr(sep, "train", lambda tc, **k: trained.append((tc.arch, k)) or real_train(tc, **k))
    assert main([*args, "--d-model", "24"]) == 0  # the kept models were trained at d_model 16: retrained
    assert sorted(a for a, _ in trained) == ["gpt", "splm"] and all(k.get("force") for _, k in trained)
    assert "retraining it" in capsys.readouterr().err
    retrained = json.loads((out / "results.json").read_text())
    assert retrained["sources"]["splm"]["weights_sha256"] != results["sources"]["splm"]["weights_sha256"]


def test_the_ln_after_step_arm_and_checkpoints_of_the_wrong_model_are_refused(tmp_path, tiny_dir, capsys):
    out = tmp_path / "sep"
    assert main(["separator", "--model", f"random:{tiny_dir}", *SMALL, "--splm-ln-after-step", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["models"]) == ["splm", "splm_ln", "gpt", "pretrained"]
    assert set(results["oracle"]) == {"splm", "splm_ln"}
    ln = results["oracle"]["splm_ln"]
    assert ln["ln_after_step"] is True and ln["paper_r2"] == 0.931 and results["oracle"]["splm"]["paper_r2"] is None
    assert len(ln["r2_centered"]["per_layer"]) == 3 - 1
    gain = results["models"]["splm_ln"]["final_norm_gain"]  # its affine-free LayerNorm: a unit gain, up to ε
    np.testing.assert_allclose([gain["mean"], gain["std"], gain["max_abs_dev"]], [1.0, 0.0, 0.0], atol=1e-4)
    assert "SPLM (LN after step)" in capsys.readouterr().out
    other = ["--out", str(tmp_path / "other")]
    cases = [
        (["--gpt-checkpoint", str(out / "splm")], "--gpt-checkpoint:", "holds a 'splm' model, not a 'gpt' model"),
        (["--splm-ln-after-step", "--splm-ln-checkpoint", str(out / "splm")], "--splm-ln-checkpoint:",
         "trained without ln_after_step"),
        (["--splm-ln-checkpoint", str(out / "splm_ln")], "--splm-ln-checkpoint:", "splm_ln_after_step is off"),
        (["--symmetry", "diagonal"], "--symmetry:", "'diagonal' is not one of pooled, per-layer, both"),
        (["--centering", "layer"], "--centering:", "'layer' is not one of sequence, sequence-layer, global, none"),
    ]
    for options, flag, message in cases:
        assert main(["separator", "--model", f"random:{tiny_dir}", *SMALL, *options, *other]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {flag}") and message in err, err


@pytest.mark.slow
def test_separator_full_with_menu_feeds_the_report(tmp_path, tiny_dir, capsys):
    out = tmp_path / "sep"
    args = ["separator", "--model", f"random:{tiny_dir}", "--d-model", "16", "--n-steps", "3", "--v-hidden", "128",
            "--max-steps", "20",
            "--n-sentences", "8", "--sentence-tokens", "16", "--widths", "4", "--widths", "64", "--width", "16",
            "--max-epochs", "15", "--symmetry-k", "4", "--device", "cpu", "--out", str(out), "--quiet"]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    splm = results["models"]["splm"]
    assert splm["fit"]["shape"] in ("uniform", "decaying", "bathtub", "other") and splm["menu"]
    assert {"r2_centered", "r2_uncentered", "force_r2"} <= set(splm["menu"][0])
    assert results["models"]["pretrained"]["capacity_sweep"][-1]["n_params"] >= 16 * 4
    gpt = results["models"]["gpt"]
    assert gpt["token_axis"]["n_layers"] == len(gpt["fit"]["r2_centered"]["per_layer"]) + 2  # every one of L+1 states
    o = results["oracle"]["splm"]
    np.testing.assert_allclose(o["r2_centered"]["per_layer"], 1.0, atol=1e-4)  # its own V explains the SPLM exactly
    np.testing.assert_allclose(o["alpha"], o["alpha_expected"], rtol=1e-3)
    np.testing.assert_allclose(o["beta"], o["beta_expected"], rtol=1e-3)
    assert len(list((out / "figures").glob("*.png"))) == 3
    assert "oracle on SPLM" in capsys.readouterr().out
    report = tmp_path / "report"
    assert main(["report", "--model", f"random:{tiny_dir}", "--n-prompts", "2", "--new-tokens", "5", "--n-bootstrap",
                 "10", "--n-permutations", "5", "--separator", str(out), "--device", "cpu", "--out", str(report),
                 "--quiet"]) == 0
    html = (report / "report.html").read_text()
    assert "Shared-potential separator" in html and "Baselines: every predictor" in html


def test_results_of_an_older_fit_version_are_refused_by_the_report(tmp_path):
    from lagrangian_lens.errors import RunFolderError
    from lagrangian_lens.experiments.separator_report import report_section

    old = {"models": {"splm": {"fit": {"per_layer": [0.9], "median": 0.9}}}, "oracle": {"per_layer": [1.0]}}
    with pytest.raises(RunFolderError, match="fit version 1, older than 2: .* Run the separator again"):
        report_section(tmp_path, old)


def test_an_splm_with_other_forces_is_refused_as_the_oracle_model(tmp_path, tiny_dir, capsys):
    # The oracle reads −∇V_θ only: a PARF or hybrid member's steps have forces it does not model.
    out = tmp_path / "sep"
    assert main(["separator", "--model", f"random:{tiny_dir}", *SMALL, "--out", str(out)]) == 0
    for change in ({"pair_force": "mlp"}, {"layers": "SA"}):
        run = tmp_path / f"member-{next(iter(change))}"
        shutil.copytree(out / "splm", run)
        meta_file = run / "checkpoint" / "meta.json"
        meta = json.loads(meta_file.read_text())
        meta["model_config"].update(change)
        meta_file.write_text(json.dumps(meta))
        assert main(["separator", "--model", f"random:{tiny_dir}", *SMALL, "--splm-checkpoint", str(run),
                     "--out", str(tmp_path / "other")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --splm-checkpoint:") and "the oracle reads the potential's force only" in err
