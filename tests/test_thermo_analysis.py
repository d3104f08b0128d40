"""The attention-thermodynamics analysis on synthetic captures with known answers: uniform attention, Schottky
heads, the sink views, the model means' bootstrap replicates, streaming (a generator is a list, reduced as it
arrives), and captures of log-probabilities (the scores' shift-invariant numbers, U and F not identified)."""
import math
import weakref

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from lagrangian_lens.analysis.thermo import (
    REPLICATED,
    AttentionScores,
    ThermoConventions,
    analyse_thermo,
    sequence_specific_heat,
)
from lagrangian_lens.errors import ConfigError, TrajectoryError
from lagrangian_lens.mechanics.stats import resample_indices
from lagrangian_lens.trajectories.attention import capture_attention

from .conftest import TEXTS, tiny_model
from .test_thermo_mechanics import F64, schottky, schottky_peak


def uniform_captures(lengths=(4, 6, 9), L=2, H=3):
    return [AttentionScores(torch.zeros(L, H, T, T), torch.ones(T, T, dtype=torch.bool).tril(),
                            token_ids=torch.arange(T)) for T in lengths]


def test_analysis_of_uniform_attention_has_known_answers():
    lengths = (4, 6, 9)
    a = analyse_thermo(uniform_captures(lengths), ThermoConventions(), n_boot=200, seed=1)
    rows = [q for T in lengths for q in range(1, T)]  # query 0 skipped
    s_mean = np.mean([math.log(q + 1) for q in rows])
    assert a.per_head["entropy"]["value"].shape == (2, 3)
    np.testing.assert_allclose(a.per_head["entropy"]["value"], s_mean, rtol=1e-12)
    np.testing.assert_allclose(a.per_head["free_energy"]["value"], -s_mean, rtol=1e-12)
    np.testing.assert_allclose(a.per_head["energy"]["value"], 0, atol=1e-15)
    np.testing.assert_allclose(a.per_head["specific_heat"]["value"], 0, atol=1e-15)
    np.testing.assert_allclose(a.per_head["normalized_entropy"]["value"], 1, rtol=1e-12)
    np.testing.assert_allclose(a.per_head["sink_mass"]["value"], np.mean([1 / (q + 1) for q in rows]), rtol=1e-12)
    np.testing.assert_allclose(a.per_head["entropy_without_sinks"]["value"], np.mean([math.log(q) for q in rows]),
                               rtol=1e-12)
    m = a.metrics
    assert m["mean_entropy"]["value"] == pytest.approx(s_mean)
    assert m["per_layer_entropy"]["value"] == pytest.approx([s_mean, s_mean])
    assert m["n_sequences"] == 3 and m["n_ensembles"] == 2 * 3 * len(rows)
    for name in ("entropy", "sink_mass", "free_energy"):
        assert m[f"mean_{name}"]["ci_low"] <= m[f"mean_{name}"]["value"] <= m[f"mean_{name}"]["ci_high"]
        assert m[f"mean_{name}"]["ci_low"] < m[f"mean_{name}"]["ci_high"]  # sequences differ in length
    np.testing.assert_allclose(a.heat_curves, 0, atol=1e-15)  # C(T) = 0 at every T: flat, so peaks 'at the edge'
    assert a.peak_at_edge.all() and m["n_heads_peak_at_edge"] == 6
    np.testing.assert_allclose(a.by_query_position["entropy"][0, 0], np.log(np.arange(1, 10)), rtol=1e-12)
    np.testing.assert_array_equal(a.by_query_position["count"][0, 0], [3, 3, 3, 3, 2, 2, 1, 1, 1])
    assert a.by_key_distance["mass"].shape == (2, 3, 9)
    d0 = np.mean([1 / (q + 1) for q in rows])  # distance 0: each kept row's weight on itself
    assert a.by_key_distance["mass"][1, 2, 0] == pytest.approx(d0)


def test_analysis_finds_the_schottky_peak_of_two_level_heads():
    # every head: query 1 sees keys (0, 1) at energies (0, Δ_h); query 0 is skipped and there is no sink view
    gaps = torch.tensor([[0.5, 1.0], [2.0, 3.0]])
    scores = torch.zeros(2, 2, 2, 2)
    scores[..., 1, 1] = -gaps
    causal = torch.ones(2, 2, dtype=torch.bool).tril()
    conv = ThermoConventions(sink_positions=())
    a = analyse_thermo([AttentionScores(scores, causal)] * 2, conv, n_boot=50)
    grid = torch.tensor(conv.temperatures, **F64)
    assert_close(torch.from_numpy(a.heat_curves), schottky(grid[:, None, None], gaps.double()))
    np.testing.assert_allclose(a.peak_temperature, schottky_peak(1.0) * gaps.numpy(), rtol=0.01)
    assert not a.peak_at_edge.any()
    assert "mean_sink_mass" not in a.metrics
    assert a.metrics["mean_specific_heat"]["value"] == pytest.approx(float(schottky(torch.ones(1), gaps).mean()))


def test_excluding_sinks_makes_the_headline_the_sink_free_ensemble():
    g = torch.Generator().manual_seed(10)
    caps = [AttentionScores(torch.randn(2, 2, T, T, generator=g), torch.ones(T, T, dtype=torch.bool).tril(),
                            positions=torch.arange(T)) for T in (5, 8)]
    a = analyse_thermo(caps, ThermoConventions(sinks="exclude"), n_boot=20)
    b = analyse_thermo(caps, ThermoConventions(), n_boot=20)
    for name in ("energy", "entropy", "specific_heat"):
        np.testing.assert_allclose(a.per_head[name]["value"], a.per_head[f"{name}_without_sinks"]["value"])
        np.testing.assert_allclose(a.per_head[name]["value"], b.per_head[f"{name}_without_sinks"]["value"])
    np.testing.assert_allclose(a.per_head["sink_mass"]["value"], b.per_head["sink_mass"]["value"])


def test_conventions_and_captures_are_validated():
    assert ThermoConventions(temperatures=[0.5, 1.0, 2.0]).temperatures == (0.5, 1.0, 2.0)
    assert len(ThermoConventions().temperatures) == 25
    for kw, name in (({"ensemble_temperature": 0.0}, "ensemble_temperature"),
                     ({"temperatures": (1.0, 0.5, 2.0)}, "temperatures"),
                     ({"temperatures": (0.5, 1.0)}, "temperatures"), ({"sink_positions": (-1,)}, "sink_positions"),
                     ({"sinks": "drop"}, "sinks"), ({"sinks": "exclude", "sink_positions": ()}, "sinks"),
                     ({"skip_query_positions": -1}, "skip_query_positions")):
        with pytest.raises(ConfigError) as err:
            ThermoConventions(**kw)
        assert err.value.field == name
    causal = torch.ones(4, 4, dtype=torch.bool).tril()
    with pytest.raises(TrajectoryError, match="L, H, T, T"):
        AttentionScores(torch.zeros(2, 4, 4), causal)
    with pytest.raises(TrajectoryError, match="positions"):
        AttentionScores(torch.zeros(1, 1, 4, 4), causal, positions=torch.arange(3))
    with pytest.raises(TrajectoryError, match="layers"):
        AttentionScores(torch.zeros(1, 1, 4, 4), causal, layers=(0, 1))
    with pytest.raises(TrajectoryError, match="capture 1"):
        analyse_thermo([AttentionScores(torch.zeros(1, 2, 4, 4), causal),
                        AttentionScores(torch.zeros(2, 2, 4, 4), causal)], ThermoConventions())
    with pytest.raises(TrajectoryError, match=r"capture 1 .* at blocks \(2,\)"):  # same shape, other blocks
        analyse_thermo([AttentionScores(torch.zeros(1, 2, 4, 4), causal),
                        AttentionScores(torch.zeros(1, 2, 4, 4), causal, layers=(2,))], ThermoConventions())
    with pytest.raises(TrajectoryError, match="capture 0 is a dict, not an AttentionScores"):
        analyse_thermo([{"scores": torch.zeros(1, 2, 4, 4), "mask": causal}], ThermoConventions())
    with pytest.raises(TrajectoryError, match="no attention captures"):
        analyse_thermo([], ThermoConventions())


def random_capture(seed: int, T: int, L: int = 2, H: int = 2) -> AttentionScores:
    g = torch.Generator().manual_seed(seed)
    return AttentionScores(torch.randn(L, H, T, T, generator=g), torch.ones(T, T, dtype=torch.bool).tril())


LENGTHS = (4, 7, 5, 9, 6)  # one sequence each; lengths differ, so sequences differ in weight


def test_replicates_are_the_resamples_behind_the_model_means_intervals():
    caps = [random_capture(seed, T) for seed, T in enumerate(LENGTHS)]
    conv = ThermoConventions()
    a = analyse_thermo(caps, conv, n_boot=200, ci=0.9, seed=3)
    assert set(a.replicates) == {f"mean_{q}" for q in REPLICATED}
    draw_rows = resample_indices(len(caps), 200, 3, torch.device("cpu"))  # (n_boot, B) the resampled sequences
    alone = [analyse_thermo([c], conv, n_boot=0).metrics for c in caps]
    for name, parts in a.replicates.items():
        assert parts["draws"].shape == (200,) and parts["units"].shape == (len(caps),)
        # Their percentiles are the analysis's own interval of the model mean.
        low, high = np.quantile(parts["draws"], [0.05, 0.95])
        assert_close(torch.tensor([low, high], **F64),
                     torch.tensor([a.metrics[name]["ci_low"], a.metrics[name]["ci_high"]], **F64))
        # A draw is the pooled mean of its resample; a unit is the sequence's own mean.
        for k in (0, 7):
            resampled = analyse_thermo([caps[j] for j in draw_rows[k]], conv, n_boot=0).metrics[name]["value"]
            assert_close(torch.tensor(parts["draws"][k], **F64), torch.tensor(resampled, **F64))
        assert_close(torch.from_numpy(parts["units"]), torch.tensor([m[name]["value"] for m in alone], **F64))
    unresampled = analyse_thermo(caps, ThermoConventions(sink_positions=()), n_boot=0).replicates
    assert set(unresampled) == {f"mean_{q}" for q in REPLICATED if q != "sink_mass"}  # no sinks, no sink mass
    assert all(p["draws"].shape == (0,) and p["units"].shape == (len(caps),) for p in unresampled.values())


@pytest.mark.parametrize("conv", [ThermoConventions(), ThermoConventions(sinks="exclude", skip_query_positions=2),
                                  ThermoConventions(ensemble_temperature=0.5, sink_positions=())],
                         ids=["default", "exclude-sinks-skip-2", "T=0.5-no-sinks"])
def test_sequence_specific_heat_is_the_analysis_unit_of_the_sequence(conv):
    caps = [random_capture(seed, T) for seed, T in enumerate(LENGTHS)]
    units = analyse_thermo(caps, conv, n_boot=0).replicates["mean_specific_heat"]["units"]
    got = [sequence_specific_heat(c, conv) for c in caps]
    assert_close(torch.tensor(got, **F64), torch.from_numpy(units), rtol=1e-12, atol=0)
    logp = [sequence_specific_heat(as_log_probabilities(c), conv) for c in caps]  # shift-invariant: the same C
    assert_close(torch.tensor(logp, **F64), torch.from_numpy(units), rtol=1e-5, atol=1e-6)


def assert_same_analysis(a, b):
    assert a.metrics == b.metrics and a.layer_names == b.layer_names
    for name in ("temperatures", "heat_curves", "peak_temperature", "peak_at_edge"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    for name in ("per_head", "replicates"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.keys() == y.keys()
        for q in x:
            assert x[q].keys() == y[q].keys()
            for part in x[q]:
                np.testing.assert_array_equal(x[q][part], y[q][part])
    for name in ("by_query_position", "by_key_distance"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_a_generator_is_analysed_like_a_list_and_each_capture_is_let_go():
    conv = ThermoConventions()
    expected = analyse_thermo([random_capture(seed, T) for seed, T in enumerate(LENGTHS)], conv, n_boot=50, seed=2)
    made = []  # weak references to every capture's scores the generator has made

    def stream():
        for seed, T in enumerate(LENGTHS):
            # The analysis reduced the earlier captures and kept nothing of them.
            assert all(ref() is None for ref in made), "an earlier capture's scores are still alive"
            capture = random_capture(seed, T)
            made.append(weakref.ref(capture.scores))
            yield capture
            del capture

    assert_same_analysis(analyse_thermo(stream(), conv, n_boot=50, seed=2), expected)
    assert len(made) == len(LENGTHS)
    with pytest.raises(TrajectoryError, match="no attention captures"):
        analyse_thermo(iter(()), conv)


# -- log-probabilities: the captures of models whose attention bypasses the score capture ------------------------

SHIFT_INVARIANT = ("entropy", "specific_heat", "normalized_entropy", "sink_mass", "entropy_without_sinks",
                   "specific_heat_without_sinks", "normalized_entropy_without_sinks")
NOT_IDENTIFIED = ("energy", "free_energy", "energy_without_sinks", "free_energy_without_sinks")


def as_log_probabilities(capture: AttentionScores) -> AttentionScores:
    """ln p of ``capture`` as the probability capture records it: float32 weights, ln 0 = −inf."""
    p = capture.probabilities().float()
    return AttentionScores(p.log(), capture.visible, capture.token_ids, capture.positions, capture.layers,
                           gauge="log-probabilities")


def assert_same_shift_invariants(a, b, tol=1e-5):
    """Everything the softmax decides agrees; U, F and the energy profile of b are NaN, with the reason."""
    close = dict(atol=tol, rtol=tol)
    for name in SHIFT_INVARIANT:
        for part in ("value", "ci_low", "ci_high"):
            assert_close(torch.from_numpy(b.per_head[name][part]), torch.from_numpy(a.per_head[name][part]), **close)
        assert_close(torch.tensor(b.metrics[f"mean_{name}"]["value"], **F64),
                     torch.tensor(a.metrics[f"mean_{name}"]["value"], **F64), **close)
    for name in ("heat_curves", "peak_temperature"):
        assert_close(torch.from_numpy(getattr(b, name)), torch.from_numpy(getattr(a, name)), **close)
    assert_close(torch.tensor(b.metrics["heat_curve"]), torch.tensor(a.metrics["heat_curve"]), **close)
    for view, keys in (("by_query_position", ("entropy", "specific_heat", "count")),
                       ("by_key_distance", ("mass", "count"))):
        for key in keys:
            assert_close(torch.from_numpy(getattr(b, view)[key]), torch.from_numpy(getattr(a, view)[key]), **close)
    assert a.gauge == "scores" and a.scores_known and "not_identified" not in a.metrics
    assert b.gauge == "log-probabilities" and not b.scores_known
    assert set(b.metrics["not_identified"]) == {"U", "F", "energy_by_key_distance"}
    assert "−ln Z" in b.metrics["not_identified"]["U"] and "ln p" in b.definitions["ensemble"]
    for name in NOT_IDENTIFIED:
        assert all(np.isnan(b.per_head[name][part]).all() for part in ("value", "ci_low", "ci_high")), name
        assert all(math.isnan(x) for x in (*b.metrics[f"mean_{name}"].values(),
                                           *(v for part in b.metrics[f"per_layer_{name}"].values() for v in part)))
        assert np.isfinite(a.per_head[name]["value"]).all()  # the scores do identify them
    assert np.isnan(b.by_key_distance["energy"]).all() and b.by_key_distance["energy"].shape == a.by_key_distance[
        "energy"].shape
    assert set(a.replicates) - set(b.replicates) == {"mean_energy", "mean_free_energy"}
    for name in b.replicates:
        assert_close(torch.from_numpy(b.replicates[name]["draws"]), torch.from_numpy(a.replicates[name]["draws"]),
                     **close)


def test_log_probabilities_give_the_scores_shift_invariant_thermodynamics_and_no_u_or_f():
    g = torch.Generator().manual_seed(7)
    caps = []
    for T in LENGTHS:
        scores = 3 * torch.randn(2, 2, T, T, generator=g, dtype=torch.float64)
        scores[0, 1, T - 1, 1] = scores[1, 0, 2, 0] = -300.0  # p = e^−300: 0 in float32, ln p = −inf
        caps.append(AttentionScores(scores, torch.ones(T, T, dtype=torch.bool).tril()))
    logp = [as_log_probabilities(c) for c in caps]
    assert torch.isinf(logp[0].scores[0, 1, -1, 1]) and torch.isinf(logp[0].scores[1, 0, 2, 0])  # underflowed
    conv = ThermoConventions()
    a, b = (analyse_thermo(x, conv, n_boot=40, seed=5) for x in (caps, logp))
    assert_same_shift_invariants(a, b)
    # An underflowed key still counts in n (S / ln n) and in the pairs by key distance, as the scores count it.
    assert a.by_key_distance["count"][1, 0, 2] == b.by_key_distance["count"][1, 0, 2] == sum(T - 2 for T in LENGTHS)
    excluded = [analyse_thermo(x, ThermoConventions(sinks="exclude"), n_boot=0) for x in (caps, logp)]
    for name in ("entropy", "specific_heat", "normalized_entropy"):
        assert_close(torch.from_numpy(excluded[1].per_head[name]["value"]),
                     torch.from_numpy(excluded[0].per_head[name]["value"]), atol=1e-5, rtol=1e-5)


def test_log_probability_capture_of_a_tiny_llama_equals_its_score_capture(tokenizer):
    model = tiny_model("llama", seed=6, initializer_range=0.5)  # peaked heads, so the numbers differ between heads
    ids = [torch.tensor(tokenizer(t)["input_ids"]) for t in TEXTS]
    conv = ThermoConventions()
    a, b = (analyse_thermo((c for i in ids for c in capture_attention(model, i, gauge=gauge)), conv, n_boot=30)
            for gauge in ("scores", "log-probabilities"))
    assert a.per_head["entropy"]["value"].std() > 0.05  # the heads differ: the comparison has teeth
    assert_same_shift_invariants(a, b)


def test_mixed_gauges_are_refused():
    causal = torch.ones(4, 4, dtype=torch.bool).tril()
    scores = AttentionScores(torch.zeros(1, 2, 4, 4), causal)
    with pytest.raises(TrajectoryError, match="capture 1 holds log-probabilities, capture 0 scores"):
        analyse_thermo([scores, as_log_probabilities(scores)], ThermoConventions())
    with pytest.raises(TrajectoryError, match="capture 2 holds scores, capture 0 log-probabilities"):
        analyse_thermo([as_log_probabilities(scores)] * 2 + [scores], ThermoConventions())
