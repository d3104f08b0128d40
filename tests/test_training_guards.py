"""Training's guards: no non-finite or damaged checkpoint gets through, Ctrl-C says how to resume, settings fail
before any work, stale temporary folders go, and a run folder is owned by training."""
import json
import math
import os
import re
import shlex
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from lagrangian_lens.cli import main
from lagrangian_lens.cli import training as cli_training
from lagrangian_lens.data.corpora import read_corpus
from lagrangian_lens.errors import CheckpointError, ConfigError, RunFolderError
from lagrangian_lens.models.pretrained import gguf
from lagrangian_lens.training import TrainConfig, TrainingError, load_checkpoint, sample, train
from lagrangian_lens.training import checkpoint as checkpoint_mod
from lagrangian_lens.training import loop as loop_mod
from lagrangian_lens.training.checkpoint import read_meta, save_checkpoint
from lagrangian_lens.training.loop import prepare_data

from .test_training import TINY

DEAD_PID, LIVE_PID = "99999999", "1"  # beyond any pid_max; init
RUN = dict(max_steps=4, checkpoint_every=2, eval_every=4, **TINY)
FLAGS = [w for k, v in RUN.items() for w in (f"--{k.replace('_', '-')}", str(v))]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "shakespeare.txt"
    path.write_text(read_corpus("tiny-shakespeare")[:20_000])
    return str(path)


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """A finished 4-step run (checkpoint at step 4); tests damage copies of it."""
    out = tmp_path_factory.mktemp("trained") / "run"
    train(TrainConfig(corpus=corpus, out=str(out), **RUN), progress=False)
    return out


@pytest.fixture
def run(trained, tmp_path):
    return Path(shutil.copytree(trained, tmp_path / "run"))


def cli(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(err: str) -> None:
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def all_finite(folder: Path) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in load_file(str(folder / "model.safetensors")).values())


def test_a_diverging_run_stops_and_never_writes_non_finite_weights(corpus, tmp_path):
    out = tmp_path / "diverge"
    with pytest.raises(TrainingError) as err:
        train(TrainConfig(corpus=corpus, out=str(out), **{**RUN, "lr": 1e6, "min_lr": 1e6}), progress=False)
    ckpt = out / "checkpoint"
    assert ("last good checkpoint" in str(err.value)) == ckpt.exists()  # it names one only when there is one
    assert not ckpt.exists() or all_finite(ckpt)


def test_a_nan_after_a_good_checkpoint_keeps_and_names_it(run, corpus):
    cfg = TrainConfig(corpus=corpus, out=str(run), **{**RUN, "max_steps": 8, "lr": 1e6})
    with pytest.raises(TrainingError, match=r"last good checkpoint \(step 4\) is kept in") as err:
        train(cfg, resume=True, force=True, progress=False)
    assert err.value.options == ("lr", "dt", "grad_clip") and "--" not in str(err.value)
    assert read_meta(run)["step"] == 4 and all_finite(run / "checkpoint")


def _nan_weights(ckpt: Path) -> None:
    state = load_file(str(ckpt / "model.safetensors"))
    next(iter(state.values())).fill_(float("nan"))
    save_file(state, str(ckpt / "model.safetensors"))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {  # name: (what is done to <run>/checkpoint, what the error says)
    "non-finite weights": (_nan_weights, "holds non-finite weights"),
    "truncated weights": (lambda c: _truncate(c / "model.safetensors"), "model.safetensors is unreadable"),
    "garbage meta": (lambda c: (c / "meta.json").write_text("{not json"), "meta.json is damaged"),
    "meta of another shape": (lambda c: (c / "meta.json").write_text("[1, 2]"), "lacks a valid arch"),
    "missing folder": (lambda c: shutil.rmtree(c.parent), "no checkpoint at .*does not exist"),
    "missing tokenizer": (lambda c: shutil.rmtree(c.parent / "tokenizer"), "tokenizer is missing or damaged"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_or_non_finite_checkpoint_is_a_one_line_error(damage, run, capsys):
    harm, message = DAMAGE[damage]
    harm(run / "checkpoint")
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(run, "cpu")
    for command in (["eval", "--checkpoint", run, "--device", "cpu"], ["sample", "--checkpoint", run]):
        code, _, err = cli(command, capsys)
        assert code == 2 and err.startswith("error:")
        assert_one_line(err)


def test_a_damaged_optimizer_state_is_refused_on_resume(run, corpus):
    _truncate(run / "checkpoint" / "optimizer.pt")
    with pytest.raises(CheckpointError, match="optimiser or RNG state .* is damaged"):
        train(TrainConfig(corpus=corpus, out=str(run), **{**RUN, "max_steps": 6}), resume=True, progress=False)


def test_ctrl_c_during_train_prints_the_command_that_continues(corpus, tmp_path, monkeypatch, capsys):
    real = loop_mod.lr_at

    def interrupt_at(at):
        def lr_at(step, cfg):
            if step == at:
                raise KeyboardInterrupt
            return real(step, cfg)
        return lr_at

    monkeypatch.setattr(loop_mod, "lr_at", interrupt_at(0))
    code, _, err = cli(["train", "--corpus", corpus, "--out", tmp_path / "early", *FLAGS, "--quiet"], capsys)
    assert code == 130 and "before the first checkpoint" in err and "--resume" not in err
    assert_one_line(err)

    out = tmp_path / "run with space"
    monkeypatch.setattr(loop_mod, "lr_at", interrupt_at(3))  # after the checkpoint of step 2
    code, _, err = cli(["train", "--corpus", corpus, "--out", out, *FLAGS, "--quiet"], capsys)
    assert code == 130 and "checkpoint of step 2" in err
    assert_one_line(err)
    words = shlex.split(err.split("Continue with: ")[1])
    assert words[:2] == ["lagrangian-lens", "train"] and "--resume" in words and "--force" not in words
    monkeypatch.setattr(loop_mod, "lr_at", real)
    assert cli(words[1:], capsys)[0] == 0
    assert read_meta(out)["step"] == 4 and steps(out) == [1, 2, 3, 4]


def test_resume_drops_the_metric_rows_logged_after_the_checkpoint(run, corpus, capfd):
    with open(run / "metrics.jsonl", "a") as log:
        log.write('{"step": 5, "train_loss": -1.0}\n{"step": 6, "train_loss": -1.0}\n{"step": 7, "tr')  # killed
    train(TrainConfig(corpus=corpus, out=str(run), **{**RUN, "max_steps": 6}), resume=True, progress=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and all(r["train_loss"] > 0 for r in rows)
    assert capfd.readouterr().err == ""  # progress=False: no bar, nor anything else, on stderr


def test_stale_checkpoint_folders_are_removed_and_a_failed_write_leaves_none(tmp_path, monkeypatch):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    meta = {"arch": "splm", "model_config": {}, "train_config": {}, "step": 1, "tokenizer": "../tokenizer"}
    for name in (f".checkpoint.tmp{DEAD_PID}", f".checkpoint.old{DEAD_PID}", f".checkpoint.tmp{LIVE_PID}"):
        (tmp_path / name).mkdir()
    save_checkpoint(tmp_path, model, opt, {"torch": torch.get_rng_state()}, meta)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".checkpoint.tmp{LIVE_PID}", "checkpoint"]

    monkeypatch.setattr(checkpoint_mod, "save_file", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, model, opt, {"torch": torch.get_rng_state()}, {**meta, "step": 2})
    assert not (tmp_path / f".checkpoint.tmp{os.getpid()}").exists() and read_meta(tmp_path)["step"] == 1

    # Killed between its two renames, a save leaves only the previous checkpoint, as .checkpoint.old<pid>.
    os.replace(tmp_path / "checkpoint", tmp_path / f".checkpoint.old{DEAD_PID}")
    checkpoint_mod.clean_stale(tmp_path)
    assert read_meta(tmp_path)["step"] == 1 and not (tmp_path / f".checkpoint.old{DEAD_PID}").exists()


class FakePretrained:
    """Saves like a transformers model or tokenizer; ``fail`` makes the save die halfway."""

    def __init__(self, fail=False):
        self.config, self.fail = SimpleNamespace(), fail

    def save_pretrained(self, folder):
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "weights").write_text("w")
        if self.fail:
            raise OSError("disk full")


def test_gguf_cache_writes_remove_stale_and_failed_temporary_folders(tmp_path):
    target = tmp_path / "gguf" / "ab12"
    for pid in (DEAD_PID, LIVE_PID):
        (tmp_path / "gguf" / f"ab12.tmp{pid}").mkdir(parents=True)
    gguf._write_cache(FakePretrained(), FakePretrained(), target, source=Path("m.gguf"))
    assert sorted(p.name for p in target.parent.iterdir()) == ["ab12", f"ab12.tmp{LIVE_PID}"]
    with pytest.raises(OSError, match="disk full"):
        gguf._write_cache(FakePretrained(fail=True), FakePretrained(), target, source=Path("m.gguf"))
    assert sorted(p.name for p in target.parent.iterdir()) == ["ab12", f"ab12.tmp{LIVE_PID}"]


def test_options_typed_on_the_command_line_win_over_the_config_file(tmp_path, monkeypatch, capsys):
    toml = tmp_path / "run.toml"
    toml.write_text('arch = "gpt"\nd_model = 32\nmax_steps = 3\n')
    seen = {}

    def fake_train(cfg, **kwargs):
        seen["cfg"] = cfg
        return {}

    monkeypatch.setattr(cli_training, "train", fake_train)
    assert cli(["train", "--config", toml, "--arch", "splm", "--max-steps", "2000", "--out", tmp_path], capsys)[0] == 0
    cfg = seen["cfg"]
    assert (cfg.arch, cfg.max_steps, cfg.d_model) == ("splm", 2000, 32)  # typed defaults win; the rest from the file
    code, _, err = cli(["train", "--config", tmp_path / "missing.toml"], capsys)
    assert code == 2 and "missing.toml" in err
    assert_one_line(err)


def test_the_char_vocabulary_covers_characters_seen_only_in_validation(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(read_corpus("tiny-shakespeare")[:9_000] + "§" * 1_000)  # § only in the last 10%
    tokenizer, _, val = prepare_data(TrainConfig(corpus=str(path), out=str(tmp_path), **TINY), tmp_path)
    assert "§" in tokenizer.chars and len(val.tokens) == 1_000


BAD = [("eval_every", 0), ("block_size", 0), ("batch_size", -1), ("max_steps", -1), ("checkpoint_every", 0),
       ("lr", -1e-3), ("lr", math.nan), ("val_fraction", 0.0), ("val_fraction", 1.0), ("arch", "rnn"),
       ("tokenizer", "bpe:abc"), ("tokenizer", "bpe:"), ("tokenizer", "bpe"), ("tokenizer", "bpe:100"),
       ("tokenizer", "char:x"), ("tokenizer", ""), ("tokenizer", "two words"), ("device", "gpu"),
       ("device", "cuda:x")]


@pytest.mark.parametrize("field,value", BAD, ids=[f"{f}={v}" for f, v in BAD])
def test_invalid_settings_are_refused_with_the_setting_named(field, value):
    with pytest.raises(ConfigError, match=rf"^{field}: ") as err:
        TrainConfig(**{field: value})
    assert err.value.options == (field,)


def test_cuda_without_cuda_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a machine with a GPU
    with pytest.raises(ConfigError, match="^device: cuda requested but CUDA is not available; use cpu or auto$"):
        TrainConfig(device="cuda")


def test_valid_tokenizer_specs_and_devices_pass(tmp_path):
    for spec in ("char", "bpe:512", "smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M",
                 "random:smollm2-135m-instruct", str(tmp_path)):
        TrainConfig(tokenizer=spec)
    for device in ("cpu", "auto"):
        TrainConfig(device=device)


def test_a_bad_setting_fails_before_any_work(tmp_path, capsys):
    code, _, err = cli(["train", "--eval-every", "0", "--out", tmp_path / "never"], capsys)
    assert code == 2 and re.search("eval[-_]every", err) and not (tmp_path / "never").exists()
    assert_one_line(err)


def test_sampling_settings_are_checked_and_top_k_is_clamped(trained, capsys):
    model, tokenizer, _ = load_checkpoint(trained, "cpu")
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(ConfigError, match="^temperature: "):
            sample(model, tokenizer, "ROMEO:", temperature=bad, new_tokens=2)
    code, out, err = cli(["sample", "--checkpoint", trained, "--top-k", "100000", "--new-tokens", "4",
                          "--device", "cpu"], capsys)
    assert code == 0 and out.startswith("\n") and f"sampling among all {len(tokenizer)}" in err
    assert_one_line(err)
    code, _, err = cli(["sample", "--checkpoint", trained, "--temperature", "0"], capsys)
    assert code == 2 and "temperature" in err
    assert_one_line(err)


def test_training_refuses_another_experiments_run_folder(trained, corpus, tmp_path):
    assert json.loads((trained / "run.json").read_text())["experiment"] == "train"
    out = tmp_path / "energy"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"experiment": "energy"}))
    with pytest.raises(RunFolderError, match="energy run"):
        train(TrainConfig(corpus=corpus, out=str(out), **RUN), progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["run.json"]
