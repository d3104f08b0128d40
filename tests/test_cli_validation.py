"""Every bad input the command line can get: a non-zero exit, one line on stderr, no traceback, and no model
loaded where the check does not need one."""
import pytest

from lagrangian_lens.cli import main
from lagrangian_lens.experiments import runner as runner_mod
from lagrangian_lens.provenance import write_json

from .conftest import tiny_config


@pytest.fixture
def no_model_loads(monkeypatch):
    """Fail loudly if a check that should come first lets a model load."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")
    monkeypatch.setattr(runner_mod, "_load", refuse)
    monkeypatch.setattr(runner_mod, "load_model", refuse)


@pytest.fixture
def folders(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    energy_dir = tmp_path / "energy-run"
    write_json(energy_dir / "run.json", {"experiment": "energy"})
    train_dir = tmp_path / "train-run"
    write_json(train_dir / "run.json", {"experiment": "train"})
    not_sep = tmp_path / "not-a-separator"
    not_sep.mkdir()
    tiny = tmp_path / "tiny"
    tiny_config("llama").save_pretrained(tiny)
    empty = tmp_path / "empty-prompts.txt"
    empty.write_text("\n\n")
    return {"file": str(a_file), "energy": str(energy_dir), "train": str(train_dir), "not_sep": str(not_sep),
            "tmp": str(tmp_path), "tiny": f"random:{tiny}", "empty": str(empty)}


# (case id, argv with {placeholders}, a fragment the one-line message must contain)
CASES = [
    ("context-tokens-0", ["energy", "--context-tokens", "0"], "--context-tokens: must be >= 1"),
    ("attractor-points-1", ["energy", "--attractor-points", "1"], "--attractor-points: must be >= 2"),
    ("temperature-0", ["energy", "--decoding", "sample", "--temperature", "0"], "--temperature: must be > 0"),
    ("temperature-nan", ["energy", "--decoding", "sample", "--temperature", "nan"], "--temperature: must be > 0"),
    ("energy-scale", ["energy", "--energy-scale", "bogus"], "--energy-scale: 'bogus' is not one of log, linear"),
    ("ppl", ["energy", "--ppl", "bogus"], "--ppl: 'bogus' is not one of"),
    ("span", ["report", "--span", "bogus"], "--span: 'bogus' is not one of"),
    ("trajectory", ["stp", "--trajectory", "bogus"], "--trajectory: 'bogus' is not one of"),
    ("decoding", ["energy", "--decoding", "beam"], "--decoding: 'beam' is not one of"),
    ("site-syntax", ["energy", "--site", "block.x"], "--site: bad site 'block.x'"),
    ("site-unknown", ["sphere", "--site", "middle"], "--site: unknown site 'middle'"),
    ("axis", ["stp", "--axis", "diagonal"], "--axis: 'diagonal' is not one of token, depth"),
    ("radius", ["sphere", "--radius", "huge"], "--radius: 'huge' is not one of"),
    ("n-prompts", ["energy", "--n-prompts", "-1"], "--n-prompts: must be >= 0"),
    ("new-tokens-2", ["energy", "--new-tokens", "2"], "--new-tokens: the energy of a generated continuation needs"),
    ("n-permutations", ["report", "--n-permutations", "0"], "--n-permutations: must be >= 1"),
    ("ci", ["energy", "--ci", "1.5"], "--ci: must be > 0 and < 1"),
    ("dtype", ["energy", "--dtype", "float8"], "--dtype: 'float8' is not one of"),
    ("init", ["energy", "--init", "xavier"], "--init: 'xavier' is not one of"),
    ("device-cuda", ["energy", "--device", "cuda"], "--device: cuda requested but CUDA is not available"),
    ("device-syntax", ["stp", "--device", "gpu0"], "--device: 'gpu0' is not a device"),
    ("separator-device", ["separator", "--device", "cuda"], "--device: cuda requested but CUDA is not available"),
    ("out-is-file", ["energy", "--out", "{file}"], "is a file"),
    ("out-not-writable", ["energy", "--out", "{file}/sub"], "is not writable"),
    ("stp-into-energy", ["stp", "--out", "{energy}"], "holds a energy run"),
    ("energy-into-train", ["energy", "--out", "{train}"], "holds a train run"),
    ("report-separator", ["report", "--separator", "{not_sep}"], "--separator: "),
    ("report-separator-missing", ["report", "--separator", "{tmp}/absent"], "is not a finished separator run"),
    ("separator-widths", ["separator", "--widths", "0"], "--widths: give at least one positive width"),
    ("splm-checkpoint", ["separator", "--splm-checkpoint", "{energy}"], "--splm-checkpoint: "),
    ("missing-prompts-file", ["energy", "--prompts", "{tmp}/no-such-prompts.txt", "--model", "{tiny}"],
     "is neither 'default', a corpus"),
    ("steer-eta-1", ["steer", "--eta", "1"], "--eta: must be > 0 and < 1"),
    ("steer-eta-0", ["steer", "--eta", "0"], "--eta: must be > 0 and < 1"),
    ("steer-max-steps", ["steer", "--max-steps", "0"], "--max-steps: must be >= 1"),
    ("steer-positions", ["steer", "--positions", "0"], "--positions: must be >= 1"),
    ("steer-site", ["steer", "--site", "block.x"], "--site: bad site 'block.x'"),
    ("steer-judge", ["steer", "--judges", "gpt4"], "--judges: unknown judge 'gpt4'; known judges: embedding, lm"),
    ("steer-judge-model", ["steer", "--judges", "lm:"], "--judges: unknown judge 'lm:'"),
    ("steer-texts", ["steer", "--texts", "1"], "--texts: the paired tests need at least 2 texts"),
    ("steer-n-prompts", ["steer", "--n-prompts", "10", "--texts", "20"], "--n-prompts: 10 prompts cannot give 20"),
    ("steer-energy-tokens", ["steer", "--energy-tokens", "2"], "--energy-tokens: the energy of a steered"),
    ("steer-empty-prompts", ["steer", "--prompts", "{empty}", "--model", "{tiny}"], "has no non-empty line"),
    ("report-steer", ["report", "--steer", "{energy}"], "--steer: "),
    ("train-eval-every", ["train", "--eval-every", "0"], "--eval-every"),
    ("train-block-size", ["train", "--block-size", "0"], "--block-size"),
    ("train-tokenizer", ["train", "--tokenizer", "bpe:x"], "--tokenizer"),
    ("train-config-missing", ["train", "--config", "{tmp}/absent.toml"], "absent.toml"),
    ("train-device", ["train", "--device", "cuda"], "--device"),
    ("sample-temperature", ["sample", "--checkpoint", "{tmp}", "--temperature", "0"], "temperature"),
    ("eval-missing-checkpoint", ["eval", "--checkpoint", "{tmp}/absent"], "no checkpoint"),
]


@pytest.mark.parametrize("argv,fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exits_non_zero(argv, fragment, folders, no_model_loads, tmp_path, capsys):
    args = [a.format(**folders) for a in argv]
    if args[0] not in ("train", "sample", "eval") and "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    code = main([*args, "--quiet"] if args[0] not in ("sample", "eval") else args)
    err = capsys.readouterr().err
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    assert fragment.format(**folders) in lines[0]


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("lagrangian-lens ")


def test_every_option_of_every_command_has_its_help(capsys):
    from lagrangian_lens.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, command in sub.choices.items():
        for action in command._actions:
            if action.option_strings and action.dest != "help":
                text = (action.help or "").split("(default:")[0].strip()
                assert text, f"{name} {action.option_strings[0]} has no help text"
