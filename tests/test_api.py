"""The public API: ``import lagrangian_lens as ll`` reaches every documented name, cheaply, and a model built in
memory goes through load -> extract -> energy analysis."""
import importlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.testing import assert_close

import lagrangian_lens as ll

from .conftest import TEXTS, tiny_model

PUBLIC = {
    "load_model": "lagrangian_lens.models.pretrained.loading",
    "LoadedModel": "lagrangian_lens.models.pretrained.loading",
    "ModelSpec": "lagrangian_lens.models.spec",
    "extract": "lagrangian_lens.trajectories",
    "generate": "lagrangian_lens.trajectories",
    "readout": "lagrangian_lens.trajectories",
    "Trajectory": "lagrangian_lens.trajectories",
    "Site": "lagrangian_lens.trajectories",
    "jacobian_steer": "lagrangian_lens.steering.jacobian",
    "SteeringResult": "lagrangian_lens.steering.jacobian",
    "steer_generate": "lagrangian_lens.steering.generate",
    "attention_thermo": "lagrangian_lens.mechanics.thermo",
    "analyse_thermo": "lagrangian_lens.analysis.thermo",
    "analyse_energy": "lagrangian_lens.analysis.energy",
    "analyse_stp": "lagrangian_lens.analysis.stp",
    "analyse_sphere": "lagrangian_lens.analysis.sphere",
    "EnergyMonitor": "lagrangian_lens.analysis.monitor",
    "ChangePointMonitor": "lagrangian_lens.analysis.monitor_stream",
    "SharedPotentialFit": "lagrangian_lens.mechanics.potential_fit",
    "DepthData": "lagrangian_lens.mechanics.depth_data",
    "probe_causality": "lagrangian_lens.models.own.causality",
}


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_every_public_name_is_the_object_its_module_defines(name):
    assert getattr(ll, name) is getattr(importlib.import_module(PUBLIC[name]), name)
    assert name in ll.__all__ and name in dir(ll)


def test_all_lists_exactly_the_public_names_and_unknown_names_fail():
    assert set(ll.__all__) == {*PUBLIC, "__version__"}
    with pytest.raises(AttributeError, match="no_such_name"):
        ll.no_such_name  # noqa: B018


def test_version_comes_from_the_installed_metadata():
    from importlib.metadata import PackageNotFoundError, version

    try:
        expected = version("lagrangian-lens")
    except PackageNotFoundError:
        expected = "0.1.0"
    assert ll.__version__ == expected


def test_import_is_cheap_it_loads_neither_torch_nor_transformers():
    code = "import sys, lagrangian_lens; print(sorted({'torch', 'transformers', 'numpy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_an_in_memory_model_goes_through_load_extract_and_energy(tokenizer):
    from lagrangian_lens.analysis.energy import EnergyConventions
    from lagrangian_lens.models.pretrained.loading import param_fingerprint

    model = tiny_model("llama", seed=3)
    lm = ll.load_model(model, tokenizer=tokenizer)
    assert isinstance(lm, ll.LoadedModel) and lm.model is model and lm.tokenizer is tokenizer
    desc = lm.description
    assert (desc.source, desc.weights, desc.model_type) == ("in-memory", "pretrained", "llama")
    assert desc.spec == "LlamaForCausalLM"  # built from a config: no _name_or_path, so the class names it
    assert desc.param_fingerprint == param_fingerprint(model) and len(desc.param_fingerprint) == 64
    assert ll.load_model(lm) is lm

    trs = ll.extract(lm.model, lm.tokenizer, TEXTS, sites="final")
    assert [type(t) for t in trs] == [ll.Trajectory] * len(TEXTS)
    with torch.no_grad():
        ids = trs[0].token_ids[None]
        logits = model(ids).logits[0, :-1]  # (T, V)
    expected = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None])[:, 0]
    assert_close(trs[0].logprobs, expected, atol=1e-5, rtol=1e-4)

    result = ll.analyse_energy(trs, ll.readout(lm.model, "final"), EnergyConventions(), n_boot=20)
    n_steps = sum(len(range(t.n_positions)[t.continuation]) - 1 for t in trs)  # a step joins two positions
    assert result.metrics["n_steps"] == n_steps
    assert result.table["H"].shape[0] == len(TEXTS)
    assert all(np.isfinite(v["value"]) for v in result.metrics.values() if isinstance(v, dict))
