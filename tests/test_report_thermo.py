"""The thermo section of the main report: its stage runs on the report's trajectories for a model and its random
twin, its options are the report's own, a model whose attention is computed inline is analysed from its
log-probabilities (U and F left blank, with the reason), and a model that neither capture reads is noted, not
fatal."""
import dataclasses
import json
import math

import pytest

import lagrangian_lens as ll
from lagrangian_lens.analysis.thermo import ThermoConventions
from lagrangian_lens.errors import UnsupportedArchitectureError
from lagrangian_lens.experiments.config import BootstrapConfig, RunConfig, TrajectoryConfig
from lagrangian_lens.experiments.config_tree import build_config, leaf_values
from lagrangian_lens.experiments.runner import load_replicates
from lagrangian_lens.experiments.thermo import thermo_stage
from lagrangian_lens.experiments.thermo_report import ARRAYS_FILE, NOT_CAPTURED, explain_thermo
from lagrangian_lens.report import ReportConfig, make_report

from .conftest import TEXTS, log_probability_models, sink_logit_model, table_model, tiny_model

FIGURES = ["thermo_heat_curves.png", "thermo_heatmaps.png", "thermo_positional.png"]


def report_config(out, model, **run) -> ReportConfig:
    return ReportConfig(run=RunConfig(models=[model], n_prompts=2, device="cpu", out=str(out), **run),
                        trajectories=TrajectoryConfig(new_tokens=5), bootstrap=BootstrapConfig(n_bootstrap=20),
                        paths=dataclasses.replace(ReportConfig().paths, n_permutations=5))


def test_the_report_has_the_thermo_section_for_the_model_and_its_twin(tmp_path, tokenizer):
    loaded = ll.load_model(tiny_model("llama", seed=2), tokenizer=tokenizer)
    out = tmp_path / "r"
    path, summary = make_report(report_config(out, loaded, random_twins=True), progress=False)
    page = path.read_text()
    assert "Attention thermodynamics" in page and "mean_specific_heat" in summary
    assert page.count("data:image/png;base64,") == 12  # energy 5, STP 2, sphere 2, thermo 3
    assert sorted(p.name for p in (out / "thermo" / "figures").glob("*.png")) == FIGURES
    results = json.loads((out / "thermo" / "results.json").read_text())
    pre, rnd = results["runs"]
    assert (pre["weights"], rnd["weights"]) == ("pretrained", "random")
    for e in (pre, rnd):
        assert (out / "thermo" / e["run"] / ARRAYS_FILE).is_file()
        assert load_replicates(out / "thermo" / e["run"])["mean_entropy"]["draws"].shape == (20,)
    (block,) = results["separation"]
    assert "mean_normalized_entropy" in block["metrics"]
    # The thermo stage reads the other stages' trajectories: one collection per model, kept by every stage.
    energy = json.loads((out / "energy" / "results.json").read_text())["runs"][0]
    assert pre["conventions"]["new_tokens"] == energy["conventions"]["new_tokens"] == 5


def test_the_thermo_options_are_the_reports_own_and_collide_with_no_other_part():
    thermo_names = set(leaf_values(ThermoConventions()))
    report, others = ReportConfig(), set()  # every other part's leaf names (a shared one would set both parts)
    for f in dataclasses.fields(report):
        value = getattr(report, f.name)
        if f.name != "thermo":
            others |= set(leaf_values(value)) if dataclasses.is_dataclass(value) else {f.name}
    assert thermo_names == {"ensemble_temperature", "temperatures", "sink_positions", "sinks", "skip_query_positions"}
    assert not thermo_names & others
    cfg = build_config(ReportConfig, {"sinks": "exclude", "temperatures": [0.5, 1.0, 2.0], "skip_query_positions": 2})
    assert cfg.thermo == ThermoConventions(sinks="exclude", temperatures=(0.5, 1.0, 2.0), skip_query_positions=2)


@pytest.mark.parametrize("name", log_probability_models()[:1])
def test_an_inline_attention_model_gets_the_section_with_u_and_f_left_blank(name, tmp_path, tokenizer):
    loaded = ll.load_model(table_model(name), tokenizer=tokenizer)
    out = tmp_path / "r"
    path, _ = make_report(report_config(out, loaded), progress=False)
    (entry,) = json.loads((out / "thermo" / "results.json").read_text())["runs"]
    m = entry["metrics"]
    assert NOT_CAPTURED not in entry["conventions"] and entry["conventions"]["capture"].startswith("log-probabilities")
    assert all(math.isfinite(m[f"mean_{q}"]["value"]) for q in ("entropy", "specific_heat", "sink_mass"))
    assert m["mean_energy"]["value"] is None and m["mean_free_energy"]["value"] is None
    assert (out / "thermo" / entry["run"] / ARRAYS_FILE).is_file()
    assert sorted(p.name for p in (out / "thermo" / "figures").glob("*.png")) == FIGURES
    page = path.read_text()
    assert (f"For {entry['run']}, attention was read from the probabilities" in page
            and "U and F are not identified and are left blank" in page)
    assert "No attention was captured" not in page and "Point-perplexity energy" in page


def test_a_model_neither_capture_reads_is_noted_not_fatal(tokenizer):
    """Learned sink logits (gpt-oss): the interface path refuses them and their weights are no softmax over keys."""
    model = sink_logit_model()
    loaded = ll.load_model(model, tokenizer=tokenizer)
    trajectories = ll.extract(model, tokenizer, TEXTS[:2])
    conv, boot = ThermoConventions(), BootstrapConfig(n_bootstrap=5)
    with pytest.raises(UnsupportedArchitectureError, match="s_aux"):
        thermo_stage(conv, boot, 0, 2).analyse(trajectories, loaded, 2)
    result = thermo_stage(conv, boot, 0, 2, skip_unsupported=True).analyse(trajectories, loaded, 2)
    assert result["metrics"] == {} and "s_aux" in result["conventions"][NOT_CAPTURED]
    entry = {"run": "oss__pretrained", "model": "oss", "weights": "pretrained", **result}
    assert explain_thermo([entry]) == [f"No attention was captured for oss__pretrained "
                                       f"({result['conventions'][NOT_CAPTURED]})."]
