"""Integration on the real default model (SmolLM2-135M-Instruct from its GGUF wheel), a few hundred tokens each."""
import json

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from lagrangian_lens.analysis.energy import (
    EnergyConventions,
    analyse_energy,
)
from lagrangian_lens.models import load_model
from lagrangian_lens.models.pretrained.gguf import cached_copy_dir
from lagrangian_lens.trajectories import count_hooks, extract, generate, readout

from .conftest import TEXTS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lm():
    return load_model("smollm2-135m-instruct", device="cpu")


def test_default_model_loads_with_provenance_and_a_sha_keyed_cache(lm):
    d = lm.description
    assert d.model_type == "llama" and d.weights == "pretrained" and d.dtype == "float32"
    (digest,) = d.weights_sha256.values()
    cached = cached_copy_dir(digest)
    assert (cached / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((cached / "config.json").read_text())
    again = load_model("smollm2-135m-instruct")  # from the safetensors copy: same weights
    assert any("safetensors cache" in n for n in again.description.notes)
    assert_close(again.model.lm_head.weight, lm.model.lm_head.weight)


def test_real_model_hook_states_equal_output_hidden_states(lm):
    tr = extract(lm.model, lm.tokenizer, TEXTS[:1], sites="all,final")[0]
    hidden = lm.model(tr.token_ids[None], output_hidden_states=True).hidden_states
    assert tr.states.shape == (32, tr.n_positions, 576)
    for l in range(30):
        assert_close(tr.states[l], hidden[l][0, :-1])
    assert_close(tr.at("final"), hidden[-1][0, :-1])
    assert count_hooks(lm.model) == 0


def test_real_model_batched_generation_matches_teacher_forcing_and_gives_finite_energy(lm):
    prompts = ["The capital of France is", "def add(a, b):", "Once upon a time", "Water boils at"]
    trs = generate(lm.model, lm.tokenizer, prompts, new_tokens=16, batch_size=4)
    again = extract(lm.model, lm.tokenizer, [t.token_ids.tolist() for t in trs], batch_size=4)
    for a, b in zip(trs, again):
        assert_close(a.states, b.states, atol=2e-4, rtol=1e-3)
        assert_close(a.logprobs, b.logprobs, atol=2e-4, rtol=1e-3)
    assert lm.tokenizer.decode(trs[0].token_ids[trs[0].n_context:]).strip().startswith("Paris")
    result = analyse_energy(trs, readout(lm.model, "final"), EnergyConventions(), n_boot=100)
    m = result.metrics
    assert m["n_steps"] == 4 * 15 and m["zero_velocity_fraction"] == 0
    assert all(np.isfinite(v["value"]) for v in m.values() if isinstance(v, dict))
    assert 0 < m["el_residual_median"]["value"] < 1
    assert 1 <= m["attractor_unique_tokens_mean"]["value"] <= 11


def test_shuffled_twin_of_the_default_model_keeps_the_weight_distribution(lm):
    twin = load_model("random:smollm2-135m-instruct", init="shuffled", seed=3)
    a, b = lm.model.model.layers[5].mlp.up_proj.weight, twin.model.model.layers[5].mlp.up_proj.weight
    assert not torch.equal(a, b)
    assert_close(a.flatten().sort().values, b.flatten().sort().values)
    assert twin.description.tokenizer_source == "smollm2-135m-instruct"
