"""Run folders that cannot lie: model identity, per-stage resume keys, prompt content, ownership, tampering,
strict JSON, and the in-process API of the runners."""
import json

import pytest

from lagrangian_lens.cli import main
from lagrangian_lens.errors import RunFolderError
from lagrangian_lens.experiments import runner as runner_mod
from lagrangian_lens.provenance import write_json

from .conftest import tiny_config

FAST = ["--n-prompts", "2", "--new-tokens", "5", "--n-bootstrap", "10", "--quiet", "--device", "cpu"]
NULLS = ["--n-permutations", "5"]


def strict_load(path):
    def refuse(constant):
        raise AssertionError(f"{path} holds a bare {constant}")
    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture
def count_loads(monkeypatch):
    loads, real = [], runner_mod._load
    monkeypatch.setattr(runner_mod, "_load", lambda plan, cfg: loads.append(plan.name) or real(plan, cfg))
    return loads


def test_two_folders_with_the_same_last_component_are_two_runs(tmp_path):
    a, b = tmp_path / "a" / "model", tmp_path / "b" / "model"
    tiny_config("llama").save_pretrained(a)
    tiny_config("llama", num_hidden_layers=2, hidden_size=48).save_pretrained(b)
    out = tmp_path / "e"
    assert main(["energy", "--model", f"random:{a}", "--model", f"random:{b}", *FAST, "--out", str(out)]) == 0
    runs = strict_load(out / "results.json")["runs"]
    assert len(runs) == 2 and runs[0]["run"] != runs[1]["run"]
    assert runs[0]["model_description"]["config"]["hidden_size"] == 32
    assert runs[1]["model_description"]["config"]["hidden_size"] == 48
    assert runs[0]["metrics"]["mean_log_energy"] != runs[1]["metrics"]["mean_log_energy"]


def test_an_edited_prompt_file_is_not_resumed(tmp_path, tiny_dir, count_loads):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The cat sat on the mat and looked out of the window.\nA second prompt about rivers.\n")
    args = ["energy", "--model", f"random:{tiny_dir}", "--prompts", str(prompts), *FAST, "--out", str(tmp_path / "e")]
    assert main(args) == 0
    first = strict_load(tmp_path / "e" / "results.json")["runs"][0]
    assert main(args) == 0 and len(count_loads) == 1  # same file, same content: resumed without loading
    prompts.write_text("Completely different words now, about mountains and snow.\nAnd a new second line.\n")
    assert main(args) == 0 and len(count_loads) == 2  # same path, new content: recomputed
    second = strict_load(tmp_path / "e" / "results.json")["runs"][0]
    assert second["result_key"] != first["result_key"]
    assert second["conventions"]["prompts_sha256"] != first["conventions"]["prompts_sha256"]
    assert second["metrics"]["mean_log_energy"] != first["metrics"]["mean_log_energy"]


def test_report_reruns_only_the_stage_whose_settings_changed(tmp_path, tiny_dir, count_loads, capsys):
    out = tmp_path / "r"
    args = ["report", "--model", f"random:{tiny_dir}", "--no-random-twins", *FAST, *NULLS, "--out", str(out)]
    assert main(args) == 0 and len(count_loads) == 1
    energy = (out / "energy" / strict_load(out / "energy" / "results.json")["runs"][0]["run"] / "result.json")
    stamp = energy.stat().st_mtime_ns
    old_stp = strict_load(out / "stp" / "results.json")["runs"][0]
    capsys.readouterr()
    assert main([*args, "--n-permutations", "7"]) == 0
    assert len(count_loads) == 1  # the energy run is kept; the geometry reads the kept trajectories
    assert energy.stat().st_mtime_ns == stamp
    new_stp = strict_load(out / "stp" / "results.json")["runs"][0]
    assert new_stp["conventions"]["n_permutations"] == 7 and new_stp["result_key"] != old_stp["result_key"]
    assert "[resume] energy/" in capsys.readouterr().err  # --quiet never hides the resume notices


def test_report_without_saved_trajectories_works(tmp_path, tiny_dir):
    out = tmp_path / "r"
    assert main(["report", "--model", f"random:{tiny_dir}", "--no-random-twins", "--no-save-trajectories", *FAST, *NULLS,
                 "--out", str(out)]) == 0
    assert "Hypersphere geodesics" in (out / "report.html").read_text()
    assert not list(out.rglob("trajectories.safetensors"))


def test_a_negative_block_site_resolves_and_is_recorded_canonically(tmp_path, tiny_dir):
    out = tmp_path / "e"
    assert main(["energy", "--model", f"random:{tiny_dir}", "--site", "block.-1", *FAST, "--out", str(out)]) == 0
    entry = strict_load(out / "results.json")["runs"][0]
    assert entry["conventions"]["site"] == "block.2"  # the tiny llama has 3 blocks


def test_a_tampered_result_cannot_send_the_report_outside_its_folder(tmp_path, tiny_dir):
    out = tmp_path / "e"
    args = ["energy", "--model", f"random:{tiny_dir}", *FAST, "--out", str(out)]
    assert main(args) == 0
    entry_file = next(out.glob("*/result.json"))
    entry = strict_load(entry_file)
    entry["run"] = "../../elsewhere"
    write_json(entry_file, entry)
    assert main(args) == 2
    assert not (tmp_path.parent / "elsewhere").exists()


def test_results_are_strict_json(tmp_path):
    write_json(tmp_path / "x.json", {"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": float("-inf")}})
    assert strict_load(tmp_path / "x.json") == {"a": None, "b": [1.0, None], "c": {"d": None}}


def test_n_prompts_defaults_to_a_whole_file_and_32_of_a_corpus(tmp_path):
    from lagrangian_lens.experiments.config import RunConfig

    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(f"prompt number {i}" for i in range(40)))
    assert len(runner_mod.resolve_prompts(RunConfig(prompts=str(prompts)))) == 40
    assert len(runner_mod.resolve_prompts(RunConfig(prompts="wikitext-2-test"))) == 32
    assert len(runner_mod.resolve_prompts(RunConfig(prompts="wikitext-2-test", n_prompts=5))) == 5


def test_runners_accept_a_model_loaded_in_python(tmp_path, tokenizer):
    import lagrangian_lens as ll
    from lagrangian_lens.experiments.config import BootstrapConfig, RunConfig
    from lagrangian_lens.experiments.energy import EnergyConfig, run_energy
    from lagrangian_lens.experiments.stp import StpConfig, run_stp

    from .conftest import tiny_model

    loaded = ll.load_model(tiny_model("llama", seed=5), tokenizer=tokenizer)  # seed 0 would equal its twin
    run = RunConfig(models=[loaded], random_twins=True, n_prompts=2, device="cpu", out=str(tmp_path / "e"))
    entries = run_energy(EnergyConfig(run=run, bootstrap=BootstrapConfig(n_bootstrap=10)), progress=False)
    assert [e["weights"] for e in entries] == ["pretrained", "random"]
    assert entries[0]["metrics"]["mean_log_energy"] != entries[1]["metrics"]["mean_log_energy"]
    stp = run_stp(StpConfig(run=RunConfig(models=[loaded], n_prompts=2, device="cpu", out=str(tmp_path / "s"))),
                  progress=False)
    assert stp[0]["metrics"]["n_triplets"] > 0


def test_inside_refuses_names_that_leave_the_folder(tmp_path):
    from lagrangian_lens.provenance import inside

    assert inside(tmp_path, "run__random") == tmp_path.resolve() / "run__random"
    for bad in ("../x", "a/b", "..", ""):
        with pytest.raises(RunFolderError):
            inside(tmp_path, bad)


def test_a_new_version_of_an_analysis_redoes_its_finished_runs(tmp_path, tiny_dir, monkeypatch, count_loads):
    from lagrangian_lens.experiments import energy as energy_mod

    args = ["energy", "--model", f"random:{tiny_dir}", *FAST, "--out", str(tmp_path / "e")]
    assert main(args) == 0 and len(count_loads) == 1
    real = energy_mod.energy_stage
    monkeypatch.setattr(energy_mod, "energy_stage",
                        lambda *a, **k: __import__("dataclasses").replace(real(*a, **k), version=99))
    assert main(args) == 0 and len(count_loads) == 2  # same settings, newer analysis: not resumed


def test_twins_get_replicates_and_a_separation_block_that_a_resume_keeps(tmp_path, tokenizer, count_loads):
    import torch
    from safetensors.torch import load_file

    import lagrangian_lens as ll
    from lagrangian_lens.analysis.geometry import PathConventions
    from lagrangian_lens.analysis.stp import HEADLINE
    from lagrangian_lens.experiments.config import BootstrapConfig, RunConfig
    from lagrangian_lens.experiments.stp import StpConfig, run_stp
    from lagrangian_lens.experiments.tables import SEPARATION_HEADER, summary_rows
    from lagrangian_lens.mechanics.separation import DOES_NOT_SEPARATE, SEPARATES

    from .conftest import tiny_model

    loaded = ll.load_model(tiny_model("llama", seed=5), tokenizer=tokenizer)
    out = tmp_path / "s"
    cfg = StpConfig(run=RunConfig(models=[loaded], random_twins=True, n_prompts=3, device="cpu", out=str(out)),
                    paths=PathConventions(n_permutations=20), bootstrap=BootstrapConfig(n_bootstrap=40))
    pre, rnd = run_stp(cfg, progress=False)
    assert (pre["weights"], rnd["weights"]) == ("pretrained", "random") and len(count_loads) == 2
    for e in (pre, rnd):
        saved = load_file(out / e["run"] / "replicates.safetensors")
        assert saved["mean_a_perp.draws"].shape == (40,) and saved["mean_a_perp.units"].shape == (e["metrics"]["n_paths"],)
        assert saved["mean_a_perp.draws"].dtype == torch.float64
    doc = strict_load(out / "results.json")
    assert [r["run"] for r in doc["runs"]] == [pre["run"], rnd["run"]]
    assert doc["runs"][0] == strict_load(out / pre["run"] / "result.json")  # runs stay their result.json files
    (block,) = doc["separation"]
    assert (block["pretrained"], block["random"]) == (pre["run"], rnd["run"])
    assert {"mean_a_perp", "tangential_normal_ratio", "decelerating_fraction"} <= block["metrics"].keys()
    for sep in block["metrics"].values():
        assert sep["verdict"] in (SEPARATES, DOES_NOT_SEPARATE) and sep["paired"] and sep["ci"] == 0.95
    assert pre["separation"] == {"random": rnd["run"], "metrics": block["metrics"]} and "separation" not in rnd
    rows = {r[0]: r for r in summary_rows([pre, rnd], HEADLINE)}
    assert rows["metric"][-1] == SEPARATION_HEADER and rows["p_normal"][-1] == "-"
    assert rows["mean_a_perp"][-1].endswith(block["metrics"]["mean_a_perp"]["verdict"])

    pre_again, _ = run_stp(cfg, progress=False)  # resumed: nothing loaded, the separation rebuilt from the files
    assert len(count_loads) == 2 and pre_again["separation"] == pre["separation"]
    assert strict_load(out / "results.json")["separation"] == doc["separation"]

    kept = (out / pre["run"] / "result.json").stat().st_mtime_ns
    (out / rnd["run"] / "replicates.safetensors").unlink()  # a finished run without its replicates is redone
    pre_again, _ = run_stp(cfg, progress=False)
    assert (out / rnd["run"] / "replicates.safetensors").is_file()
    assert (out / pre["run"] / "result.json").stat().st_mtime_ns == kept
    assert pre_again["separation"] == pre["separation"]  # same trajectories, same seed: the same numbers
