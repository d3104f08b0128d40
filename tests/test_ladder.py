"""The SPLM-family ladder: the arm table and its parameter matching, counted FLOPs against known answers, the
equal-FLOPs interpolation and the seed summary on synthetic runs, and a whole tiny ladder that resumes without
retraining."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lagrangian_lens.cli import build_parser, main
from lagrangian_lens.cli.args import dataclass_from_args
from lagrangian_lens.errors import ConfigError
from lagrangian_lens.experiments.grok import cpu_threads
from lagrangian_lens.experiments.ladder import RECORD, relative_drift, run_ladder
from lagrangian_lens.experiments.ladder_arms import ARMS, DEFAULT_ARMS, SCALES, LadderConfig, count_params, size_arms
from lagrangian_lens.experiments.ladder_report import FIGURES, arm_rows, ppl_at_flops, report_section, summarise
from lagrangian_lens.experiments.registry import experiments
from lagrangian_lens.models.own.gpt import GPT, GPTConfig, matched_gpt_config, n_params
from lagrangian_lens.models.own.splm import SPLM, SPLMConfig
from lagrangian_lens.report.build import check_finished_folder
from lagrangian_lens.training.flops import count_training_flops, training_flops_per_token

from .conftest import TEXTS


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: on a shared CPU, extra threads only wait on each other (restored afterwards)."""
    with cpu_threads(1):
        yield


# --- the arm table ------------------------------------------------------------------------------------------------

def test_every_arm_builds_and_is_sized_to_the_budget():
    cfg = LadderConfig(arms=list(ARMS))  # the cpu scale: d_model 32, the vanilla SPLM's V_θ 192 wide
    plans = size_arms(cfg, vocab=1024)
    budget = count_params(cfg.arm_config("splm", seed=0), 1024)
    assert list(plans) == list(ARMS) and {p.budget for p in plans.values()} == {budget}
    assert plans["splm"].config.v_hidden == 192 and plans["splm"].mismatch == 0  # the reference itself
    for name, plan in plans.items():
        tc = plan.config
        shared = (tc.max_steps, tc.batch_size, tc.block_size, tc.d_model, tc.lr, tc.min_lr)
        assert shared == (300, 16, 64, 32, 3e-3, 3e-4)
        built = GPT(tc.gpt_config(1024)) if tc.arch == "gpt" else SPLM(tc.splm_config(1024))
        assert plan.params == n_params(built)  # the recorded count is the model's
        if tc.arch == "splm":
            assert abs(plan.mismatch) < 0.01, name
            # one unit of width more or less moves the count away from the budget
            for h in (tc.v_hidden - 1, tc.v_hidden + 1):
                other = count_params(dataclasses.replace(tc, v_hidden=h), 1024)
                assert abs(other - budget) >= abs(plan.params - budget), (name, h)
    gpt = plans["gpt"].config
    assert gpt.n_layer == matched_gpt_config(budget, vocab_size=1024, block_size=64, d_model=32).n_layer == 4
    assert abs(plans["gpt"].mismatch) < 0.05
    assert plans["hybrid-1a"].config.layers == "SSSASSSS" and plans["hybrid-2a"].config.layers == "AASSSSSS"
    assert plans["splm-legt-dt16-ln"].config.xi == "legt-dt:16" and plans["splm-legt-dt16-ln"].config.ln_after_step
    assert DEFAULT_ARMS == [a for a in ARMS if a != "parf-mlp"]


def test_unknown_arm_is_one_line_listing_the_arms(tmp_path, capsys):
    with pytest.raises(ConfigError) as info:
        LadderConfig(arms=["splm", "splm-kema5"])
    message = str(info.value)
    assert info.value.field == "arms" and "\n" not in message and "'splm-kema5'" in message
    assert all(name in message for name in ARMS)
    out = tmp_path / "ladder"
    assert main(["ladder", "--arms", "nope", "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: --arms: 'nope': not an arm; known arms: gpt, splm,")
    assert not out.exists()  # refused before any work


def test_budget_too_small_for_an_arm_is_refused_before_training():
    cfg = LadderConfig(arms=["hybrid-2a"], v_hidden=8)  # two attention blocks alone exceed this budget
    with pytest.raises(ConfigError, match="arm 'hybrid-2a' holds .* over the budget"):
        size_arms(cfg, vocab=65)
    with pytest.raises(ConfigError, match="not both"):
        LadderConfig(v_hidden=64, budget=100_000)


def test_scale_sets_the_sizes_and_explicit_options_override_it():
    assert LadderConfig(scale="paper").size == SCALES["paper"]
    paper = LadderConfig(scale="paper", d_model=128, v_hidden=512).size
    assert (paper.d_model, paper.v_hidden, paper.budget, paper.steps, paper.block_size) == (128, 512, None, 4000, 256)
    args = build_parser().parse_args(["ladder", "--scale", "paper", "--steps", "10", "--budget", "2000000"])
    size = dataclass_from_args(LadderConfig, args).size
    assert (size.steps, size.d_model, size.budget, size.v_hidden) == (10, 256, 2_000_000, None)
    plans = size_arms(LadderConfig(scale="paper", budget=2_000_000, arms=["splm", "gpt"]), vocab=1024)
    h = plans["splm"].config.v_hidden  # one unit of width more adds 2·d_model + 2h + 3 parameters
    assert abs(plans["splm"].params - 2_000_000) <= (2 * 256 + 2 * h + 3) / 2
    assert "ladder" in experiments()


# --- FLOPs --------------------------------------------------------------------------------------------------------

class LinearLM(nn.Module):
    """Embedding, then one bias-free linear read-out: the only counted ops are the read-out's matrix products."""

    def __init__(self, vocab: int, d: int):
        super().__init__()
        self.emb, self.head = nn.Embedding(vocab, d), nn.Linear(d, vocab, bias=False)

    def forward(self, idx, targets):
        logits = self.head(self.emb(idx))
        return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def test_linear_model_count_is_the_analytic_one():
    vocab, d, B, T = 11, 6, 3, 5
    model = LinearLM(vocab, d)
    x = torch.randint(vocab, (B, T))
    # forward 2·in·out per token; backward twice that (the input's gradient and the weight's)
    assert count_training_flops(model, x, x) == 3 * 2 * d * vocab * B * T
    assert all(p.grad is None for p in model.parameters())  # the counted backward leaves no gradients


def test_gpt_count_is_the_analytic_one_attention_included():
    V, T, d, L = 50, 16, 32, 2
    model = GPT(GPTConfig(vocab_size=V, block_size=T, d_model=d, n_layer=L, n_head=4))
    x = torch.randint(V, (3, T + 1))
    # Per token and layer: the four dense maps 24d² forward (×3 with the backward); the attention's two products
    # 4Td forward, and 10Td backward (flash attention recomputes the scores: five products); read-out 2dV (×3).
    expected = L * (3 * 24 * d * d + 14 * T * d) + 3 * 2 * d * V
    assert training_flops_per_token(model, x[:, :-1], x[:, 1:]) == expected


def test_splm_costs_more_per_parameter_than_the_same_width_gpt():
    V, T, d = 64, 16, 16
    splm = SPLM(SPLMConfig(vocab_size=V, block_size=T, d_model=d, n_steps=4, v_hidden=64))
    gpt = GPT(GPTConfig(vocab_size=V, block_size=T, d_model=d, n_layer=2))
    x = torch.randint(V, (2, T + 1))
    per_param = {name: training_flops_per_token(m, x[:, :-1], x[:, 1:]) / n_params(m)
                 for name, m in (("splm", splm), ("gpt", gpt))}
    assert per_param["splm"] > 2 * per_param["gpt"]  # the shared V_θ runs, with its force's double backward, L times


# --- the numbers across runs --------------------------------------------------------------------------------------

def test_ppl_at_flops_interpolates_in_log_flops():
    flops, ppl = [1e9, 1e10, 1e11], [30.0, 20.0, 10.0]
    assert ppl_at_flops(flops, ppl, 10 ** 10.5) == pytest.approx(15.0)
    assert ppl_at_flops(flops, ppl, 1e10) == pytest.approx(20.0)
    assert ppl_at_flops(flops, ppl, 1e11 * (1 + 1e-12)) == pytest.approx(10.0)  # the end, reached another way
    assert ppl_at_flops(flops, ppl, 2e11) is None and ppl_at_flops(flops, ppl, 5e8) is None
    assert ppl_at_flops(flops, ppl, None) is None


def test_relative_drift_per_block():
    before = torch.tensor([[[1.0, -3.0]], [[2.0, 2.0]]])  # (n_S 2, B 1, T 2)
    after = torch.tensor([[[2.0, -1.0]], [[2.0, 2.0]]])
    torch.testing.assert_close(relative_drift(after - before, before, after), torch.tensor([1.5 / 1.75, 0.0]))


def _run(arm, seed, ppl, flops_per_token=10.0, drift=None):
    return {"run": f"{arm}-s{seed}", "arm": arm, "seed": seed, "status": "finished", "steps": 4, "params": 100,
            "flops_per_token": flops_per_token, "tokens_per_step": 10, "train_flops": flops_per_token * 40,
            "curve_steps": [2, 4], "curve_val_ppl": [2 * ppl, ppl], "final_val_ppl": ppl, "train_s": 2.0,
            "tokens_per_s": 20.0, "wall_s": 3.0, "drift_per_block": drift}


def test_summary_over_seeds_with_known_answers():
    arms = [{"arm": "gpt", "arch": "gpt", "params": 100, "mismatch": 0.0, "n_layer": 2, "v_hidden": None},
            {"arm": "splm", "arch": "splm", "params": 100, "mismatch": 0.0, "n_layer": None, "v_hidden": 8}]
    runs = [_run("gpt", 0, 10.0), _run("gpt", 1, 12.0), _run("splm", 0, 15.0, 20.0, [0.1, 0.3]),
            _run("splm", 1, 18.0, 20.0, [0.3, 0.5])]
    results = summarise(runs, arms, complete=True)
    gpt, splm = results["arms"]
    assert splm["val_ppl_mean"] == pytest.approx(16.5) and splm["val_ppl_std"] == pytest.approx(math.sqrt(4.5))
    assert splm["ratio_to_gpt"] == pytest.approx(1.5) and gpt["ratio_to_gpt"] == pytest.approx(1.0)
    assert results["gpt_train_flops"] == 400.0
    # the GPT spent 400 FLOPs: the SPLM's first evaluation (2 steps × 10 tokens × 20) is exactly there
    assert splm["ppl_at_gpt_flops"] == pytest.approx((30.0 + 36.0) / 2) and gpt["ppl_at_gpt_flops"] == 11.0
    assert splm["drift_per_block"] == pytest.approx([0.2, 0.4]) and gpt["drift_per_block"] is None
    assert results["best"] == {"arm": "splm", "val_ppl": 16.5, "ratio_to_gpt": 1.5, "within_goal": False}
    assert arm_rows(results)[2][4] == "16.50 ± 2.12"


# --- a whole tiny ladder ------------------------------------------------------------------------------------------

def tiny_ladder(tmp_path, **change) -> LadderConfig:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(TEXTS) * 40, encoding="utf-8")
    settings = dict(arms=["gpt", "splm"], seeds=[0], corpus=str(corpus), tokenizer="char", d_model=16, v_hidden=32,
                    n_steps=4, block_size=16, batch_size=4, steps=5, eval_every=1, warmup_steps=1, eval_batches=2,
                    drift_batches=2, prompt="The quick", sample_tokens=8, device="cpu", out=str(tmp_path / "ladder"))
    return LadderConfig(**{**settings, **change})


def _stamps(out):
    return {p.relative_to(out): p.stat().st_mtime_ns for p in sorted((out / "runs").rglob("*")) if p.is_file()
            and p.name in ("model.safetensors", "metrics.jsonl")}


def test_tiny_ladder_end_to_end_then_resumes_without_retraining(tmp_path, capsys):
    cfg = tiny_ladder(tmp_path)
    results = run_ladder(cfg, progress=False)
    out = tmp_path / "ladder"
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    assert all((out / "figures" / name).is_file() for name in FIGURES)
    gpt, splm = results["runs"]
    for run in (gpt, splm):
        assert run["status"] == "finished" and run["steps"] == 5 and run["curve_steps"] == [1, 2, 3, 4, 5]
        assert run["train_flops"] == run["flops_per_token"] * 5 * 4 * 16
        assert run["params"] == json.loads((out / "runs" / run["run"] / "run.json").read_text())["n_params"]
        assert run["final_val_ppl"] == run["curve_val_ppl"][-1] and run["tokens_per_s"] > 0
    assert len(splm["drift_per_block"]) == 4 and gpt["drift_per_block"] is None
    assert results["best"]["arm"] == "splm" and results["complete"]
    assert results["best"]["ratio_to_gpt"] == pytest.approx(splm["final_val_ppl"] / gpt["final_val_ppl"])
    assert set(results["samples"]["arms"]) == {"splm", "gpt"}
    assert results["samples"]["arms"]["gpt"]["greedy"].startswith("The quick")
    section = report_section(out, results)
    assert len(section.tables[0].rows) == 3 and len(section.texts) == 4
    check_finished_folder(str(out), "ladder")  # `report --ladder DIR` accepts it

    before = _stamps(out)
    again = run_ladder(cfg, progress=False)
    assert _stamps(out) == before  # no run was retrained or resumed
    assert [r["final_val_ppl"] for r in again["runs"]] == [gpt["final_val_ppl"], splm["final_val_ppl"]]
    assert "retraining" not in capsys.readouterr().err

    run_ladder(tiny_ladder(tmp_path, arms=["splm"], lr=2e-3), progress=False)  # a changed setting retrains
    assert "the run splm-s0 was made with other settings (lr); retraining it" in capsys.readouterr().err
    assert len((out / "runs" / "splm-s0" / "metrics.jsonl").read_text().splitlines()) == 5  # its curve restarted


def test_an_interrupted_run_resumes_where_its_checkpoint_left_it(tmp_path, monkeypatch):
    import lagrangian_lens.training.loop as loop

    real, calls = loop.evaluate, []

    def evaluate_then_stop(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:  # step 6 of 6: after the checkpoint at step 5 (every fifth evaluation)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    cfg = tiny_ladder(tmp_path, arms=["splm"], steps=6)
    monkeypatch.setattr(loop, "evaluate", evaluate_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_ladder(cfg, progress=False)
    run = tmp_path / "ladder" / "runs" / "splm-s0"
    assert json.loads((run / "checkpoint" / "meta.json").read_text())["step"] == 5
    monkeypatch.setattr(loop, "evaluate", real)
    results = run_ladder(cfg, progress=False)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6] and results["runs"][0]["final_val_ppl"] is not None
    assert json.loads((run / RECORD).read_text())["status"] == "finished"
