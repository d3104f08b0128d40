"""The command line, in-process: models, energy (with resume after Ctrl-C) and report, on a tiny model."""
import json

import numpy as np
import pytest

from lagrangian_lens.cli import main
from lagrangian_lens.experiments import runner as runner_mod
from lagrangian_lens.experiments.plotting import read_columns

from .conftest import tiny_config

FAST = ["--n-prompts", "3", "--new-tokens", "6", "--n-bootstrap", "20", "--quiet", "--device", "cpu"]


def test_models_lists_the_default_as_available(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m-instruct" in out and "yes (installed wheel)" in out and "qwen2.5-1.5b" in out


def test_energy_writes_results_steps_and_figures(tmp_path, tiny_dir, capsys):
    out = tmp_path / "e"
    assert main(["energy", "--model", f"random:{tiny_dir}", *FAST, "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    (entry,) = results["runs"]
    assert entry["weights"] == "random" and entry["conventions"]["site"] == "final"
    for key in ("global_cv", "avg_trajectory_cv", "cv_of_trajectory_means", "mean_log_energy", "kv_ratio_of_means",
                "mean_kv_ratio", "mean_delta_h", "mean_abs_delta_h", "drift_h", "el_residual_median",
                "attractor_unique_tokens_mean"):
        m = entry["metrics"][key]
        assert m["ci_low"] <= m["value"] <= m["ci_high"], key
    header = (out / entry["run"] / "steps.csv").read_text().splitlines()[0].split(",")
    assert header[:2] == ["trajectory", "step"] and {"token_id", "log_kinetic", "log_ppl", "log_energy"} <= set(header)
    assert len((out / entry["run"] / "steps.csv").read_text().splitlines()) == 1 + 3 * 5
    steps = read_columns(out / entry["run"] / "steps.csv", ("trajectory", "log_energy", "power_e_norm"))
    first = steps["trajectory"] == 0
    e = np.exp(steps["log_energy"][first])
    np.testing.assert_allclose(steps["power_e_norm"][first][:-1], np.diff(e / e.mean()), rtol=1e-9)
    assert len(list((out / "figures").glob("*.png"))) == 5
    run = json.loads((out / "run.json").read_text())
    assert run["seed"] == 0 and run["experiment"] == "energy" and "torch" in run["environment"]["packages"]
    assert "global_cv" in capsys.readouterr().out


def test_ctrl_c_keeps_finished_runs_and_a_rerun_resumes(tmp_path, tiny_dir, monkeypatch, capsys):
    out = tmp_path / "e"
    other = tmp_path / "tiny-gpt2"
    tiny_config("gpt2").save_pretrained(other)
    args = ["energy", "--model", f"random:{tiny_dir}", "--model", f"random:{other}", *FAST, "--out", str(out)]
    real, calls = runner_mod._run_plan, []

    def interrupted(plan, *a, **k):
        calls.append(plan.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(plan, *a, **k)

    monkeypatch.setattr(runner_mod, "_run_plan", interrupted)
    assert main(args) == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    finished = json.loads((out / "results.json").read_text())["runs"]
    assert [e["run"] for e in finished] == [calls[0]]

    loads, real_load = [], runner_mod._load
    monkeypatch.setattr(runner_mod, "_run_plan", real)
    monkeypatch.setattr(runner_mod, "_load", lambda plan, cfg: loads.append(plan.name) or real_load(plan, cfg))
    assert main(args) == 0
    assert len(loads) == 1 and loads[0].startswith("tiny-gpt2-")  # the first model was kept, not loaded again
    assert "[resume] energy/" + calls[0] in capsys.readouterr().err
    assert len(json.loads((out / "results.json").read_text())["runs"]) == 2


def test_changed_settings_are_not_resumed(tmp_path, tiny_dir):
    out = tmp_path / "e"
    assert main(["energy", "--model", f"random:{tiny_dir}", *FAST, "--out", str(out)]) == 0
    first = json.loads((out / "results.json").read_text())["runs"][0]["result_key"]
    assert main(["energy", "--model", f"random:{tiny_dir}", *FAST, "--ppl", "argmax", "--out", str(out)]) == 0
    second = json.loads((out / "results.json").read_text())["runs"][0]
    assert second["result_key"] != first and second["conventions"]["ppl"] == "argmax"


def test_report_is_one_self_contained_html_file(tmp_path, tiny_dir, capsys):
    out = tmp_path / "r"
    assert main(["report", "--model", f"random:{tiny_dir}", *FAST, "--out", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 12  # energy 5, STP 2, sphere 2, thermo 3
    assert 'src="http' not in page and "<link" not in page
    for text in ("Point-perplexity energy", "STP kinematics (token axis)", "Hypersphere geodesics (token axis)",
                 "identity_max_abs_error", "mean_el_residual", "Conventions", "Provenance", "global_cv", "init=hf, seed=0"):
        assert text in page
    assert "report:" in capsys.readouterr().out


def test_teacher_forced_without_continuation_is_explained(tmp_path, tiny_dir, capsys):
    code = main(["energy", "--model", f"random:{tiny_dir}", *FAST, "--trajectory", "teacher-forced",
                 "--out", str(tmp_path / "e")])
    assert code == 2
    assert "no continuation after 50 context tokens" in capsys.readouterr().err


def test_bad_option_value_is_an_error_not_a_traceback(tmp_path, capsys):
    assert main(["energy", "--ppl", "mode", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "error: --ppl: 'mode' is not one of realized, argmax\n"


@pytest.mark.parametrize("axis", ["token", "depth"])
def test_stp_and_sphere_write_results_and_figures_on_both_axes(tmp_path, tiny_dir, axis, capsys):
    geo = ["--model", f"random:{tiny_dir}", "--n-prompts", "4", "--n-permutations", "20", "--quiet", "--device", "cpu",
           "--axis", axis]
    assert main(["stp", *geo, "--out", str(tmp_path / "stp")]) == 0
    (entry,) = json.loads((tmp_path / "stp" / "results.json").read_text())["runs"]
    m = entry["metrics"]
    assert m["identity_max_abs_error"] < 1e-9 and m["branch_cos_nonnegative"] + m["branch_cos_negative"] == m["n_triplets"]
    assert 0 <= m["decelerating_fraction"]["value"] <= 1 and 1 / 21 <= m["p_normal"] <= 1
    assert entry["conventions"]["axis"] == axis
    assert len(list((tmp_path / "stp" / "figures").glob("*.png"))) == 2
    assert main(["sphere", *geo, "--out", str(tmp_path / "sphere")]) == 0
    (entry,) = json.loads((tmp_path / "sphere" / "results.json").read_text())["runs"]
    assert 0 < entry["metrics"]["mean_step_angle"]["value"] < 3.1416 and 0 <= entry["metrics"]["mean_el_residual"]["value"] <= 1
    assert len(list((tmp_path / "sphere" / "figures").glob("*.png"))) == 2
    if axis == "depth":  # one path per token, each through embed + 3 blocks
        assert entry["metrics"]["n_steps"] == 3 * entry["metrics"]["n_paths"]
    assert "z_normal" in capsys.readouterr().out


def test_p_values_at_the_permutation_floor_print_as_a_bound():
    from lagrangian_lens.experiments.tables import summary_rows

    entries = [{"run": "a", "metrics": {"p_normal": 1 / 101, "p_tangential": 0.5}, "conventions": {"n_permutations": 100}}]
    rows = dict((r[0], r[1]) for r in summary_rows(entries, ("p_normal", "p_tangential")))
    assert rows == {"metric": "a", "p_normal": "< 0.0099 (1/(n+1), n = 100)", "p_tangential": "0.5"}


def test_the_logit_displacement_is_exact_at_final_and_reported_at_a_block(tmp_path, tiny_dir):
    for site, exact in (("final", True), ("block.1", False)):
        out = tmp_path / site
        assert main(["energy", "--model", f"random:{tiny_dir}", *FAST, "--site", site, "--out", str(out)]) == 0
        value = json.loads((out / "results.json").read_text())["runs"][0]["metrics"]["logit_displacement_rel_error"]
        assert (value["value"] < 1e-4) == exact, (site, value)


def test_experiment_prints_its_default_results_folder(tmp_path, tiny_dir, capsys, monkeypatch):
    # Without --out the command writes to its config's default folder, and must print that path, not 'None'.
    monkeypatch.chdir(tmp_path)
    assert main(["energy", "--model", f"random:{tiny_dir}", *FAST]) == 0
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert printed == "results: runs/energy/results.json"
    assert (tmp_path / "runs" / "energy" / "results.json").is_file()
