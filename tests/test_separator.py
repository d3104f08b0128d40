"""The separator experiment end to end on tiny models: its results, its oracle, and stage caches keyed by exactly
what each stage reads (a changed setting is recomputed, an unchanged one is kept, a wrong checkpoint refused)."""
import json

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
    assert len(results["models"]["splm"]["fit"]["per_layer"]) == 3 - 1
    np.testing.assert_allclose(results["oracle"]["per_layer"], 1.0, atol=1e-4)
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

    trained = []
    real_train = sep.train
    monkeypatch.setattr(sep, "train", lambda tc, **k: trained.append((tc.arch, k)) or real_train(tc, **k))
    assert main([*args, "--d-model", "24"]) == 0  # the kept models were trained at d_model 16: retrained
    assert sorted(a for a, _ in trained) == ["gpt", "splm"] and all(k.get("force") for _, k in trained)
    assert "retraining it" in capsys.readouterr().err
    retrained = json.loads((out / "results.json").read_text())
    assert retrained["sources"]["splm"]["weights_sha256"] != results["sources"]["splm"]["weights_sha256"]


def test_a_checkpoint_of_the_wrong_architecture_is_refused(tmp_path, tiny_dir, capsys):
    out = tmp_path / "sep"
    assert main(["separator", "--model", f"random:{tiny_dir}", *SMALL, "--out", str(out)]) == 0
    capsys.readouterr()
    code = main(["separator", "--model", f"random:{tiny_dir}", *SMALL, "--gpt-checkpoint", str(out / "splm"),
                 "--out", str(tmp_path / "other")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --gpt-checkpoint:") and "holds a 'splm' model, not a 'gpt' model" in err


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
    assert results["models"]["pretrained"]["capacity_sweep"][-1]["n_params"] >= 16 * 4
    gpt = results["models"]["gpt"]
    assert gpt["token_axis"]["layer"] == (len(gpt["fit"]["per_layer"]) + 2) // 2  # the middle of the L+1 states
    o = results["oracle"]
    np.testing.assert_allclose(o["per_layer"], 1.0, atol=1e-4)  # its own potential explains the SPLM exactly
    np.testing.assert_allclose(o["alpha"], o["alpha_expected"], rtol=1e-3)
    np.testing.assert_allclose(o["beta"], o["beta_expected"], rtol=1e-3)
    assert len(list((out / "figures").glob("*.png"))) == 3
    assert "oracle on SPLM" in capsys.readouterr().out
    report = tmp_path / "report"
    assert main(["report", "--model", f"random:{tiny_dir}", "--n-prompts", "2", "--new-tokens", "5", "--n-bootstrap",
                 "10", "--n-permutations", "5", "--separator", str(out), "--device", "cpu", "--out", str(report),
                 "--quiet"]) == 0
    assert "Shared-potential separator" in (report / "report.html").read_text()
