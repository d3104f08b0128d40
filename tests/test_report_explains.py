"""A report that explains: generated opening sentences, a definition for every metric, example texts, the header.

The sentences are checked on hand-made entries whose answer is known, each claim in two opposite cases, and
with metrics both as plain numbers and as {"value", "ci_low", "ci_high"} estimates.
"""
import csv
import math

import numpy as np
import pytest

from lagrangian_lens.analysis.energy import EnergyAnalysis
from lagrangian_lens.analysis.sphere import HEADLINE as SPHERE_HEADLINE
from lagrangian_lens.analysis.stp import HEADLINE as STP_HEADLINE
from lagrangian_lens.experiments import energy, sphere, stp
from lagrangian_lens.experiments.definitions import covers, undefined
from lagrangian_lens.experiments.explain import explain_energy, explain_sphere, explain_stp
from lagrangian_lens.experiments.plotting import plt, read_columns, save
from lagrangian_lens.experiments.samples import format_samples, read_samples, token_texts, write_samples
from lagrangian_lens.experiments.section import Section, TextBlock, value_of
from lagrangian_lens.report.build import describe_weights, subtitle
from lagrangian_lens.report.html import render_section

VOCAB = 49152


def est(value, lo=None, hi=None):
    """A bootstrap estimate as the results files hold it."""
    return {"value": value, "ci_low": value if lo is None else lo, "ci_high": value if hi is None else hi}


def entry(weights, metrics, model="m", vocab=VOCAB):
    return {"run": f"{model}__{weights}", "model": model, "weights": weights, "metrics": metrics,
            "conventions": {"n_permutations": 100, "axis": "token"},
            "model_description": {"config": {"vocab_size": vocab}}}


def text(sentences):
    return " ".join(sentences)


# -- energy ------------------------------------------------------------------------------------------------------

def energy_pair(random_cv, random_entropy, classical=(0.4, 0.1), el_cos=(-0.04, -0.08)):
    pre = entry("pretrained", {"global_cv": est(0.1), "mean_log_energy": est(7.0), "mean_entropy": est(1.5),
                               "mean_log_ppl": est(0.6), "classical_energy_cv": est(classical[0]),
                               "el_cos_median": est(el_cos[0]), "el_residual_median": est(0.9)})
    rnd = entry("random", {"global_cv": est(random_cv), "mean_log_energy": est(13.0), "mean_entropy": est(random_entropy),
                           "mean_log_ppl": est(7.1), "classical_energy_cv": est(classical[1]),
                           "el_cos_median": est(el_cos[1]), "el_residual_median": est(0.9)})
    return [pre, rnd]


def test_energy_says_which_cv_is_smaller_and_why():
    flat = text(explain_energy(energy_pair(random_cv=0.025, random_entropy=10.3)))
    assert "the random twin's is 4 times smaller" in flat
    assert "near-uniform" in flat and f"ln V = {math.log(VOCAB):.3g}" in flat and "49,152-token" in flat
    assert "7.1" in flat and "not from conservation" in flat
    # std = CV·|mean|: 0.025·13 = 0.325 for the twin against 0.1·7 = 0.7
    assert "a smaller spread (std 0.325 against 0.7) over a larger mean" in flat

    peaked = text(explain_energy(energy_pair(random_cv=0.4, random_entropy=2.0)))
    assert "the pretrained model's is 4 times smaller" in peaked
    assert "far from uniform" in peaked and "conservation" not in peaked


def test_energy_classical_cv_against_the_papers_50_percent():
    assert "below the paper's > 50 %" in text(explain_energy(energy_pair(0.02, 10.3, classical=(0.4, 0.1))))
    assert "above the paper's > 50 %, as it reports" in text(explain_energy(energy_pair(0.02, 10.3, classical=(0.7, 0.8))))
    mixed = text(explain_energy(energy_pair(0.02, 10.3, classical=(0.7, 0.1))))
    assert "above the paper's > 50 % for the pretrained model only" in mixed


def test_energy_el_cosine_near_zero_means_the_equation_fails():
    assert "nearly orthogonal and the equation does not hold" in text(explain_energy(energy_pair(0.02, 10.3)))
    aligned = text(explain_energy(energy_pair(0.02, 10.3, el_cos=(0.95, 0.97))))
    assert "point the same way" in aligned and "does not hold" not in aligned


def test_energy_single_run_and_missing_vocabulary():
    pre, rnd = energy_pair(0.02, 10.3)
    alone = text(explain_energy([pre]))
    assert "for the pretrained model" in alone and "twin" not in alone and "uniform" not in alone
    rnd["model_description"] = {}
    assert "uniform" not in text(explain_energy([pre, rnd]))  # no vocabulary size: that clause is dropped


def test_explanations_accept_plain_numbers():
    pre, rnd = energy_pair(0.02, 10.3)
    for e in (pre, rnd):
        e["metrics"] = {k: value_of(v) for k, v in e["metrics"].items()}
    assert text(explain_energy([pre, rnd])) == text(explain_energy(energy_pair(0.02, 10.3)))


# -- STP ---------------------------------------------------------------------------------------------------------

def stp_entry(weights, nonneg, speed, p, z):
    return entry(weights, {"cos_nonnegative_fraction": est(nonneg), "paper_identity_failure_fraction": est(1 - nonneg),
                           "speed_decreasing_fraction": speed, "z_tangential": z, "z_normal": z,
                           "p_tangential": p, "p_normal": p})


def test_stp_branch_speed_and_null_in_opposite_cases():
    smooth = text(explain_stp([stp_entry("pretrained", 0.03, est(0.51, 0.49, 0.52), 1 / 101, -50.0),
                               stp_entry("random", 0.002, est(0.497, 0.487, 0.509), 1 / 101, -34.0)]))
    assert "cos(d1, d2) ≥ 0 in only 3 % of the pretrained model's triplets and 0.2 % of the random twin's" in smooth
    assert "misses 1 − cos by more than 1e-6 in 97 %" in smooth
    assert "about as often as it rises (both intervals contain 50 %)" in smooth
    assert "smoother than chance, with random weights too" in smooth and "the smallest 100 permutations" in smooth

    rough = text(explain_stp([stp_entry("pretrained", 0.8, est(0.7, 0.65, 0.75), 1.0, 12.0)]))
    assert "≥ 0 in 80 % of the pretrained model's triplets" in rough
    assert "falls more often than it rises (its interval lies above 50 %)" in rough
    assert "larger for the pretrained model" in rough and "rougher than chance" in rough and "twin" not in rough


def test_stp_speed_without_an_interval_is_stated_not_judged():
    flat = text(explain_stp([stp_entry("pretrained", 0.03, 0.52, 0.5, 0.0)]))
    assert "52 % (no interval; 2 points from 50 %)" in flat and "as often" not in flat
    assert "indistinguishable from shuffled" in flat


# -- sphere ------------------------------------------------------------------------------------------------------

def sphere_entry(weights, p, theta=0.9, norm_cv=0.07):
    stats = ("step_angle", "covariant_acceleration", "geodesic_curvature", "el_residual", "path_excess")
    return entry(weights, {"mean_step_angle": est(theta), "null_mean_step_angle": 1.1, "norm_cv": est(norm_cv),
                           "radial_fraction": est(0.06), **{f"p_{s}": p for s in stats},
                           **{f"z_{s}": -5.0 if p < 0.5 else 5.0 for s in stats}})


def test_sphere_straighter_or_not_than_shuffled():
    straight = text(explain_sphere([sphere_entry("pretrained", 0.0099), sphere_entry("random", 0.0099, 1.2, 1e-8)]))
    assert "0.9 rad (51.6°) for the pretrained model and 1.2 rad (68.8°) for the random twin" in straight
    assert "so they are straighter than shuffled" in straight and "less straight" not in straight
    assert "for the random twin it is constant" in straight and "for the pretrained model it varies" in straight

    bent = text(explain_sphere([sphere_entry("pretrained", 0.999)]))
    assert "have larger step angle" in bent and "so they are less straight than shuffled" in bent
    assert "twin" not in bent


# -- definitions -------------------------------------------------------------------------------------------------

def test_a_definition_row_covers_its_names_and_patterns():
    assert covers("z_*, p_*", "z_normal") and covers("z_*, p_*", "p_step_angle")
    assert not covers("z_*, p_*", "mean_z") and covers("a, b", "b") and not covers("a, b", "a, b")
    assert undefined(["x", "y"], [["quantity"], ["x"]]) == ["y"]


def metric_and_definition_rows(section: Section):
    """The metric keys of a section's metrics table and the rows of its definitions table."""
    (metrics,) = [t.rows for t in section.tables if t.rows[0][0] == "metric"]
    (definitions,) = [t.rows for t in section.tables if t.caption == "Definitions"]
    return [r[0] for r in metrics[1:]], definitions


@pytest.mark.parametrize("module, keys", [(energy, energy.HEADLINE + energy.DETAIL), (stp, STP_HEADLINE),
                                          (sphere, SPHERE_HEADLINE)], ids=["energy", "stp", "sphere"])
def test_every_printed_metric_has_a_definition(tmp_path, module, keys):
    section = module.report_section(tmp_path, [entry("pretrained", {})])
    printed, definitions = metric_and_definition_rows(section)
    assert set(keys) <= set(printed)
    assert undefined(printed, definitions) == []


def test_sections_open_with_their_sentences(tmp_path):
    entries = [stp_entry("pretrained", 0.03, est(0.51, 0.49, 0.52), 1 / 101, -50.0)]
    section = stp.report_section(tmp_path, entries)
    assert section.paragraphs[0] == text(explain_stp(entries))


# -- example texts and token text --------------------------------------------------------------------------------

def test_samples_file_and_its_escaped_place_in_the_report(tmp_path):
    samples = [{"trajectory": 0, "mode": "generated", "context": "Once upon", "continuation": " a <script>time"}]
    run_dir = tmp_path / "m__pretrained"
    run_dir.mkdir()
    write_samples(run_dir / "samples.txt", samples)
    assert read_samples(run_dir) == format_samples(samples)
    assert "--- context ---\nOnce upon\n--- continuation: generated ---\n a <script>time" in read_samples(run_dir)
    section = energy.report_section(tmp_path, [entry("pretrained", {})])
    (block,) = section.texts
    assert block.text == read_samples(run_dir)
    html = render_section(Section("t", texts=[TextBlock("c", block.text)]))
    assert "&lt;script&gt;" in html and "<script>" not in html


class Tokenizer:
    """Decodes id i to the i-th of a few awkward strings."""

    WORDS = ["plain", "a,comma", 'a "quote"', "new\nline"]

    def decode(self, ids):
        return "".join(self.WORDS[i] for i in ids)


def test_steps_csv_token_text_survives_commas_quotes_and_newlines(tmp_path):
    tokens = np.array([[0, 1, 2, 3]])
    h = np.array([[1.0, 2.0, 3.0, 4.0]])
    analysis = EnergyAnalysis({"K": h / 2, "V": h / 2, "H": h}, {}, tokens, np.array([[1, 2, 3, 4]]))
    assert token_texts(Tokenizer(), [3, 0, 3, -1]) == {3: "new\nline", 0: "plain"}
    energy.write_steps_csv(tmp_path / "steps.csv", analysis, token_texts(Tokenizer(), tokens.ravel()))
    with open(tmp_path / "steps.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["token_text"] for r in rows] == Tokenizer.WORDS and [r["token_id"] for r in rows] == ["0", "1", "2", "3"]
    np.testing.assert_array_equal(read_columns(tmp_path / "steps.csv", ("log_energy",))["log_energy"], h[0])


# -- header and figures ------------------------------------------------------------------------------------------

def test_the_header_states_format_quantisation_and_precision():
    gguf = {"weights": "pretrained", "source": "/x/SmolLM2-135M-Instruct.Q4_1.gguf", "dtype": "float32"}
    assert describe_weights(gguf) == "SmolLM2-135M-Instruct: a Q4_1 GGUF de-quantised to float32"
    hub = {"weights": "pretrained", "spec": "org/m", "source": "org/m", "dtype": "float32",
           "config": {"torch_dtype": "bfloat16"}}
    assert describe_weights(hub) == "org/m: bfloat16 weights run in float32"
    twin = {"weights": "random", "source": "smollm2", "init": "hf", "seed": 0, "dtype": "float32"}
    assert describe_weights(twin) == "smollm2 with random weights: hf initialisation (seed 0) in float32"
    runs = [{"model": "m", "model_description": gguf}, {"model": "m", "model_description": twin}]
    assert subtitle(runs) == f"{describe_weights(gguf)}; {describe_weights(twin)}"


def test_every_figure_is_saved_as_png_and_svg(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    path = save(fig, tmp_path / "f.png")
    assert path == tmp_path / "f.png" and path.stat().st_size > 0
    assert (tmp_path / "f.svg").read_text().lstrip().startswith("<?xml")


def test_several_models_are_named_by_model():
    entries = [*energy_pair(0.02, 10.3), *(dict(e, model="other", run=f"other__{e['weights']}")
                                           for e in energy_pair(0.3, 2.0))]
    sentences = explain_energy(entries)
    assert "0.1 for m and 0.02 for m's random twin: m's random twin's is 5 times smaller" in sentences[0]
    assert any("0.1 for other and 0.3 for other's random twin: other's is 3 times smaller" in s for s in sentences)


def _separator(fits):
    from lagrangian_lens.experiments.separator_report import explain_separator

    models = {name: {"fit": {"r2_centered": {"median": r2}, "force_r2": {"median": force}}}
              for name, (r2, force) in fits.items()}
    return " ".join(explain_separator({"models": models}))


def test_the_separator_sentences_follow_the_numbers():
    text = _separator({"splm": (0.99, 0.98), "gpt": (0.4, 0.05), "pretrained": (0.1, 0.02)})
    assert "of SPLM only" in text and "For GPT, pretrained the potential adds little" in text
    text = _separator({"splm": (0.5, 0.6), "gpt": (0.4, 0.3)})
    assert "No model's layer steps reach R² 0.9" in text and "adds little" not in text
