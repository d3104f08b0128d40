"""The separator experiment end to end on tiny models, with its stage caches."""
import json

import numpy as np

from lagrangian_lens.cli import main


def test_separator_runs_caches_its_stages_and_feeds_the_report(tmp_path, tiny_dir, capsys, monkeypatch):
    out = tmp_path / "sep"
    args = ["separator", "--pretrained", f"random:{tiny_dir}", "--d-model", "16", "--n-steps", "3", "--max-steps", "20",
            "--n-sentences", "8", "--sentence-tokens", "16", "--widths", "4", "--widths", "64", "--width", "16",
            "--max-epochs", "15", "--symmetry-k", "4", "--no-menu", "--out", str(out), "--quiet"]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["models"]) == {"splm", "gpt", "pretrained"}
    splm = results["models"]["splm"]
    assert len(splm["fit"]["per_layer"]) == 3 - 1 and splm["fit"]["shape"] in ("uniform", "decaying", "bathtub", "other")
    assert results["models"]["pretrained"]["capacity_sweep"][-1]["n_params"] >= 16 * 4
    gpt = results["models"]["gpt"]
    assert gpt["token_axis"]["layer"] == (len(gpt["fit"]["per_layer"]) + 2) // 2  # the middle of the L+1 states
    o = results["oracle"]
    np.testing.assert_allclose(o["per_layer"], 1.0, atol=1e-4)  # its own potential explains the SPLM exactly
    np.testing.assert_allclose(o["alpha"], o["alpha_expected"], rtol=1e-3)
    np.testing.assert_allclose(o["beta"], o["beta_expected"], rtol=1e-3)
    assert len(list((out / "figures").glob("*.png"))) == 3
    assert "oracle on SPLM" in capsys.readouterr().out
    # a re-run reuses every cached stage: nothing is trained or fitted again
    import lagrangian_lens.experiments.separator as sep

    monkeypatch.setattr(sep, "analyse_potential", lambda *a, **k: (_ for _ in ()).throw(AssertionError("refit")))
    monkeypatch.setattr(sep, "train", lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrain")))
    assert main(args) == 0
    report = tmp_path / "report"
    assert main(["report", "--model", f"random:{tiny_dir}", "--n-prompts", "2", "--new-tokens", "5", "--n-bootstrap", "10",
                 "--n-permutations", "5", "--separator", str(out), "--device", "cpu", "--out", str(report), "--quiet"]) == 0
    assert "Shared-potential separator" in (report / "report.html").read_text()
