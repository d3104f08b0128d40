"""The causal-violation probe catches every leaky variant and passes every real model."""
import pytest
import torch

from lagrangian_lens.models.own.causality import probe_causality, probe_model
from lagrangian_lens.models.own.gpt import GPT, GPTConfig
from lagrangian_lens.models.own.splm import SPLM, SPLMConfig

from .conftest import tiny_model

CFG = dict(vocab_size=40, block_size=32, d_model=16, n_steps=3, v_hidden=32, v_init_scale=0.5)


class XiFromCurrentH(SPLM):
    """Leak: ξ recomputed from the current h inside the force, without detach, so ∇_h runs through ξ."""

    def force(self, xi, h):
        with torch.enable_grad():
            h_var = h.detach().requires_grad_(True) if not h.requires_grad else h.view_as(h)
            v = self.potential(self.context_pool(h_var), h_var).sum()
            grad, = torch.autograd.grad(v, h_var, create_graph=torch.is_grad_enabled())
        return -grad


class BidirectionalMean(SPLM):
    """Leak: ξ is the mean over the whole sequence."""

    def context_pool(self, h0):
        return h0.mean(dim=1, keepdim=True).expand_as(h0)


class FutureShift(SPLM):
    """Leak: ξ_t pools up to t+1."""

    def context_pool(self, h0):
        pooled = super().context_pool(h0)
        return torch.cat([pooled[:, 1:], pooled[:, -1:]], dim=1)


@pytest.mark.parametrize("leaky", [XiFromCurrentH, BidirectionalMean, FutureShift])
def test_every_leaky_variant_fails_with_the_worst_pair(leaky):
    torch.manual_seed(0)
    result = probe_model(leaky(SPLMConfig(**CFG)), 40)
    assert not result.passed and result.max_violation > 1e-6
    t_prime, t = result.worst_pair
    assert t_prime < t
    assert "sees the future" in str(result)


@pytest.mark.parametrize("options", [{}, {"mass": "token"}, {"mass": "logfreq"}, {"ln_after_step": True},
                                     {"force": "closed_form"}])
def test_real_splms_pass_both_tests(options):
    torch.manual_seed(0)
    result = probe_model(SPLM(SPLMConfig(**{**CFG, **options})), 40)
    assert result.passed and set(result.tests) == {"perturbation", "jacobian"}
    assert result.max_violation == 0.0


def test_gpt_baseline_passes_and_an_unmasked_gpt_fails(monkeypatch):
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=40, block_size=32, d_model=16, n_layer=2, n_head=2))
    assert probe_model(gpt, 40).passed
    import torch.nn.functional as F

    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, is_causal, **k: sdpa(*a, is_causal=False, **k))
    assert not probe_model(gpt, 40).passed


def test_a_hugging_face_model_passes_through_the_generic_callable():
    model = tiny_model("llama")
    result = probe_causality(lambda ids: model(ids).logits, model.config.vocab_size, seq_len=10,
                             embed_fn=model.get_input_embeddings(),
                             from_embeddings_fn=lambda e, ids: model(inputs_embeds=e).logits)
    assert result.passed and result.max_violation < 1e-6


def test_probe_model_takes_only_own_models_and_says_what_to_use_instead():
    with pytest.raises(TypeError, match="probe_causality with callables"):
        probe_model(tiny_model("llama"), 40)
