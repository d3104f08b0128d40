"""Training: it learns, it resumes exactly, DDP keeps ranks identical, and every bad input is a clear error."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lagrangian_lens.cli import main
from lagrangian_lens.data.corpora import read_corpus
from lagrangian_lens.errors import CausalityError, CheckpointError, DataError
from lagrangian_lens.models.own.splm import SPLMConfig
from lagrangian_lens.training import (
    TrainConfig,
    TrainingError,
    evaluate_checkpoint,
    train,
)
from lagrangian_lens.training import loop as loop_mod
from lagrangian_lens.training.checkpoint import read_meta

TINY = dict(d_model=32, n_steps=2, v_hidden=64, block_size=32, batch_size=16, eval_batches=4, warmup_steps=5,
            device="cpu", lr=3e-3)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "shakespeare.txt"
    path.write_text(read_corpus("tiny-shakespeare")[:40_000])
    return str(path)


def losses(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train_loss"] for r in rows}  # a resumed run's rows overwrite the interrupted ones


@pytest.mark.parametrize("arch", ["splm", "gpt"])
def test_fifty_steps_lower_the_validation_loss(arch, corpus, tmp_path):
    cfg = TrainConfig(arch=arch, corpus=corpus, out=str(tmp_path / arch), max_steps=50, eval_every=50, **TINY)
    before = TrainConfig(**{**cfg.__dict__, "max_steps": 1, "lr": 0.0, "out": str(tmp_path / "zero")})
    start = train(before, progress=False)["val_loss"]
    end = train(cfg, progress=False)["val_loss"]
    assert end < start - 0.5
    meta = read_meta(tmp_path / arch)
    assert meta["step"] == 50 and meta["arch"] == arch and meta["seed"] == 1337 and "sha" in meta["git"]
    assert (tmp_path / arch / "tokenizer" / "tokenizer.json").is_file()
    ev = evaluate_checkpoint(tmp_path / arch, split="val", max_blocks=10)
    assert ev["ppl"] == pytest.approx(2.718281828 ** ev["loss"])


def straight_and_resumed(base: dict, tmp_path: Path, monkeypatch, *, interrupt_at: int, checkpoint: int):
    """Train ``base`` once straight, once killed at step ``interrupt_at`` and resumed; the two loss curves."""
    train(TrainConfig(**base, out=str(tmp_path / "straight")), progress=False)
    real = loop_mod.lr_at

    def interrupted(step, cfg):
        if step == interrupt_at:
            raise KeyboardInterrupt
        return real(step, cfg)

    monkeypatch.setattr(loop_mod, "lr_at", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**base, out=str(tmp_path / "resumed")), progress=False)
    assert read_meta(tmp_path / "resumed")["step"] == checkpoint  # the last checkpoint survives the kill
    monkeypatch.setattr(loop_mod, "lr_at", real)
    train(TrainConfig(**base, out=str(tmp_path / "resumed")), resume=True, progress=False)
    return losses(tmp_path / "straight"), losses(tmp_path / "resumed")


def test_resume_after_an_interrupt_continues_exactly(corpus, tmp_path, monkeypatch):
    base = dict(corpus=corpus, max_steps=20, eval_every=10, checkpoint_every=10, **TINY)
    straight, resumed = straight_and_resumed(base, tmp_path, monkeypatch, interrupt_at=15, checkpoint=10)
    assert [resumed[s] for s in range(11, 21)] == [straight[s] for s in range(11, 21)]


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(corpus, tmp_path, monkeypatch):
    real = loop_mod.lr_at
    monkeypatch.setattr(loop_mod, "lr_at", lambda step, cfg: float("nan") if step >= 12 else real(step, cfg))
    cfg = TrainConfig(corpus=corpus, out=str(tmp_path / "nan"), max_steps=30, checkpoint_every=10, eval_every=100, **TINY)
    with pytest.raises(TrainingError, match=r"became nan at step 13.*last good checkpoint \(step 10\)"):
        train(cfg, progress=False)
    assert read_meta(tmp_path / "nan")["step"] == 10


def test_corpus_shorter_than_the_block_is_an_error(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("to be or not to be, that is the question" * 2)
    with pytest.raises(DataError, match="shorter than block_size 32"):
        train(TrainConfig(corpus=str(short), out=str(tmp_path / "o"), **TINY), progress=False)


def test_changed_config_and_other_architecture_are_refused_on_resume(corpus, tmp_path):
    cfg = TrainConfig(corpus=corpus, out=str(tmp_path / "r"), max_steps=2, eval_every=2, **TINY)
    train(cfg, progress=False)
    with pytest.raises(CheckpointError, match=r"changed config: lr: 0.003 -> 0.01"):
        train(TrainConfig(**{**cfg.__dict__, "lr": 0.01}), resume=True, progress=False)
    train(TrainConfig(**{**cfg.__dict__, "lr": 0.01, "max_steps": 3}), resume=True, force=True, progress=False)
    with pytest.raises(CheckpointError, match="is a 'splm' model; arch gpt cannot resume it"):
        train(TrainConfig(**{**cfg.__dict__, "arch": "gpt"}), resume=True, progress=False)
    with pytest.raises(CheckpointError, match="already holds a checkpoint"):
        train(cfg, progress=False)


def test_a_leaky_model_is_stopped_before_the_first_step(corpus, tmp_path, monkeypatch):
    from .test_causal_probe import FutureShift

    monkeypatch.setattr(loop_mod, "build_model", lambda arch, config: FutureShift(SPLMConfig(**config)))
    with pytest.raises(CausalityError, match="aborted before the first optimiser step"):
        train(TrainConfig(corpus=corpus, out=str(tmp_path / "leak"), **TINY), progress=False)
    assert not (tmp_path / "leak" / "checkpoint").exists()


def test_train_sample_and_eval_commands_and_a_toml_config(corpus, tmp_path, capsys):
    toml = tmp_path / "run.toml"
    toml.write_text(f'arch = "gpt"\ncorpus = "{corpus}"\nmax_steps = 3\neval_every = 3\nd_model = 32\nblock_size = 32\n'
                    'batch_size = 8\neval_batches = 2\nn_layer = 1\n')
    out = tmp_path / "cli"
    assert main(["train", "--config", str(toml), "--device", "cpu", "--out", str(out), "--quiet"]) == 0
    assert read_meta(out)["train_config"]["arch"] == "gpt"
    assert main(["sample", "--checkpoint", str(out), "--prompt", "ROMEO:", "--new-tokens", "12", "--greedy"]) == 0
    assert "ROMEO:" in capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(out), "--split", "val"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["split"] == "val" and result["ppl"] > 1
    assert main(["sample", "--checkpoint", str(tmp_path / "nothing")]) == 2


def test_ddp_on_two_cpu_processes_keeps_the_weights_identical(corpus, tmp_path):
    out = tmp_path / "ddp"
    out.mkdir()
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(worker), str(out), corpus], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"torchrun exited {done.returncode}:\n{done.stderr[-4000:]}"
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["param_fingerprint"] == ranks[1]["param_fingerprint"]
    assert ranks[0]["train_loss"] == ranks[1]["train_loss"]  # the logged loss is the mean across ranks
    assert read_meta(out)["world_size"] == 2


def test_a_checkpoint_older_than_a_setting_still_resumes(corpus, tmp_path):
    # A checkpoint written before a setting existed lacks it in its record: it reads as the setting's default (the
    # value that reproduces such runs), so the run resumes; a non-default value is still a refused change.
    cfg = TrainConfig(corpus=corpus, out=str(tmp_path / "old"), max_steps=2, eval_every=2, **TINY)
    train(cfg, progress=False)
    meta_file = tmp_path / "old" / "checkpoint" / "meta.json"
    meta = json.loads(meta_file.read_text())
    for added in ("xi", "pair_force", "layers", "final_norm"):
        del meta["train_config"][added]
    meta_file.write_text(json.dumps(meta))
    train(TrainConfig(**{**cfg.__dict__, "max_steps": 3}), resume=True, progress=False)
    with pytest.raises(CheckpointError, match=r"changed config: xi: 'mean' -> 'kema:2'"):
        train(TrainConfig(**{**cfg.__dict__, "max_steps": 4, "xi": "kema:2"}), resume=True, progress=False)


def test_a_forced_restart_starts_a_fresh_metrics_log(corpus, tmp_path):
    cfg = TrainConfig(corpus=corpus, out=str(tmp_path / "f"), max_steps=2, eval_every=1, **TINY)
    train(cfg, progress=False)
    train(TrainConfig(**{**cfg.__dict__, "max_steps": 3}), force=True, progress=False)
    steps = [row["step"] for row in map(json.loads, (tmp_path / "f" / "metrics.jsonl").read_text().splitlines())]
    assert steps == sorted(set(steps)) and steps[-1] == 3 and steps.count(1) == 1
