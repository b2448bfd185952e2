"""Every bad input is one line on stderr naming the file (and line, key or field), exit code 2, and nothing
written: through `selfreward.cli.main`, in this process, without loading a model."""

from __future__ import annotations

from pathlib import Path

import pytest

from selfreward.artifacts import DataError
from selfreward.cli import main
from selfreward.config import INPUT_FILES
from selfreward.inputs import load_labels

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "tiny.yaml")
LATIN1 = "caf\xe9".encode("latin-1")  # b"caf\xe9": not UTF-8


def fails(capsys: pytest.CaptureFixture[str], out: Path, *argv: str) -> str:
    """Run the command; assert exit code 2, one line `selfreward: error: ...`, nothing under `out`."""
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("selfreward: error: ") and err.count("\n") == 1, err
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))
    return err


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "out"


@pytest.mark.parametrize("command", ["config", "iterate"])
def test_non_utf8_config_names_file_and_line(
    command: str, tmp_path: Path, out: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"judge:\n  samples: 3\n# " + LATIN1 + b"\n")
    err = fails(capsys, out, command, "--config", str(path), f"output_dir={out}")
    assert f"{path}:3: not UTF-8" in err


@pytest.mark.parametrize("command", ["config", "iterate"])
def test_non_utf8_seed_file_names_key_file_and_line(
    command: str, tmp_path: Path, out: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "seed.jsonl"
    path.write_bytes(b'{"instruction": "a"}\n{"instruction": "' + LATIN1 + b'"}\n')
    err = fails(capsys, out, command, "--config", TINY, f"output_dir={out}", f"seed_data.instructions={path}")
    assert "seed_data.instructions" in err and f"{path}:2: not UTF-8" in err


def test_non_utf8_jsonl_names_file_and_line(tmp_path: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A data file read by a command (here human labels): artifacts.iter_jsonl names file:line."""
    labels = tmp_path / "labels.jsonl"
    labels.write_bytes(
        b'{"prompt": "p", "response_a": "' + LATIN1 + b'", "response_b": "b", "human_preference": "a"}\n'
    )
    argv = ["judge-eval", "--config", TINY, "--model", str(fake_model(tmp_path)), f"output_dir={out}"]
    err = fails(capsys, out, *argv, "--labels", str(labels))
    assert f"{labels}:1: not UTF-8" in err


@pytest.mark.parametrize("command", ["config", "iterate"])
def test_override_that_is_not_yaml(command: str, out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = fails(capsys, out, command, "--config", TINY, f"output_dir={out}", "judge.samples=[")
    assert "override 'judge.samples=['" in err and "not valid YAML" in err


@pytest.mark.parametrize("command", ["config", "iterate"])
def test_config_path_that_is_a_folder(
    command: str, tmp_path: Path, out: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "configs.yaml"
    folder.mkdir()
    err = fails(capsys, out, command, "--config", str(folder), f"output_dir={out}")
    assert f"{folder}: is a folder" in err


@pytest.mark.parametrize("command", ["config", "iterate"])
def test_config_path_that_does_not_exist(
    command: str, tmp_path: Path, out: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = fails(capsys, out, command, "--config", str(tmp_path / "nope.yaml"), f"output_dir={out}")
    assert "nope.yaml: no such config file" in err


@pytest.mark.parametrize("key", INPUT_FILES)
@pytest.mark.parametrize("command", ["config", "iterate"])
def test_missing_template_or_seed_file_names_key_and_path(
    command: str, key: str, tmp_path: Path, out: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "typo" / "nope.txt"
    err = fails(capsys, out, command, "--config", TINY, f"output_dir={out}", f"{key}={missing}")
    assert f"{key}: {missing}: no such file" in err


def test_seed_file_that_is_a_folder(tmp_path: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = fails(capsys, out, "iterate", "--config", TINY, f"output_dir={out}", f"seed_data.ranked={tmp_path}")
    assert f"seed_data.ranked: {tmp_path}: not a file" in err


def test_optional_files_may_be_empty() -> None:
    from selfreward.config import load_config

    cfg = load_config(TINY, ["prompt_gen.exclude=", "sft.eft_data="])
    assert cfg.prompt_gen.exclude == "" and cfg.sft.eft_data == ""


def fake_model(tmp_path: Path) -> Path:
    """A folder that resolves as a model (it has a config.json) and that no test loads."""
    model = tmp_path / "fake-model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text("{}")
    return model


@pytest.mark.parametrize("kind", ["missing", "no-config-json"])
def test_bad_model_path_names_the_key(
    kind: str, tmp_path: Path, out: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "models" / "m1"
    if kind == "no-config-json":
        model.mkdir(parents=True)
    err = fails(capsys, out, "iterate", "--config", TINY, f"output_dir={out}", f"model={model}")
    assert f"model '{model}'" in err
    assert ("no such folder" if kind == "missing" else "no config.json") in err


def test_mistyped_label_path_is_not_sent_to_the_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # refused for its shape, online too
    with pytest.raises(DataError, match=r"pandalm: no such file \(and not a hub dataset name\)$"):
        load_labels("../shared/data/human_pairs/pandalm")
    with pytest.raises(DataError, match="no such file"):
        load_labels("a/b/c")


def test_hub_name_offline_is_a_data_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"^pandalm: no such file \(and not a hub dataset name: HF_HUB_OFFLINE=1"):
        load_labels("pandalm")


def test_mistyped_label_path_through_the_cli(tmp_path: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = fake_model(tmp_path)
    argv = ["judge-eval", "--config", TINY, "--model", str(model), f"output_dir={out}"]
    err = fails(capsys, out, *argv, "--labels", "../shared/data/human_pairs/pandalm")
    assert "pandalm: no such file (and not a hub dataset name)" in err


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("judge.samples=0", "judge.samples must be >= 1, got 0"),
        ("responses.n=0", "responses.n must be >= 1, got 0"),
        ("prompt_gen.num_prompts=0", "prompt_gen.num_prompts must be >= 1, got 0"),
        ("prompt_gen.few_shot=-2", "prompt_gen.few_shot must be >= 1, got -2"),
        ("dpo.batch_size=0", "dpo.batch_size must be >= 1, got 0"),
        ("sft.grad_accum=0", "sft.grad_accum must be >= 1, got 0"),
        ("engine.batch_size=0", "engine.batch_size must be >= 1, got 0"),
        ("iterations=-1", "iterations must be >= 0, got -1"),
        ("expert_iter.rounds=0", "expert_iter.rounds must be >= 1, got 0"),
        ("expert_iter.samples=0", "expert_iter.samples must be >= 1, got 0"),
        ("ppo.steps=0", "ppo.steps must be >= 1, got 0"),
        ("sft.max_steps=-5", "sft.max_steps must be -1 (no limit) or >= 1, got -5"),
        ("judge.top_p=1.5", "judge.top_p must be in (0, 1], got 1.5"),
        ("responses.top_p=0", "responses.top_p must be in (0, 1], got 0.0"),
        ("judge.min_digit_mass=-0.1", "judge.min_digit_mass must be in [0, 1], got -0.1"),
        ("dpo.warmup_ratio=2", "dpo.warmup_ratio must be in [0, 1], got 2.0"),
        ("engine.gpu_memory_utilization=0", "engine.gpu_memory_utilization must be in (0, 1], got 0.0"),
        ("dpo.learning_rate=nan", "dpo.learning_rate must be a finite number, got nan"),
        ("sft.learning_rate=.inf", "sft.learning_rate must be a finite number, got inf"),
        ("ppo.learning_rate=0", "ppo.learning_rate must be > 0, got 0.0"),
        ("dpo.learning_rate=-1e-5", "dpo.learning_rate must be > 0, got -1e-05"),
        ("judge.temperature=-1", "judge.temperature must be >= 0, got -1.0"),
        ("ppo.temperature=0", "ppo.temperature must be > 0, got 0.0"),
        ("ppo.reward_clip=-1", "ppo.reward_clip must be > 0, got -1.0"),
        ("run_name=../escape", "run_name must be a plain folder name"),
        ("run_name=a/b", "run_name must be a plain folder name"),
        ("run_name=/abs", "run_name must be a plain folder name"),
        ("run_name=..", "run_name must be a plain folder name"),
        ("run_name=", "run_name must be a plain folder name"),
    ],
)
def test_out_of_range_value_names_key_and_value(
    override: str, message: str, out: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = fails(capsys, out, "iterate", "--config", TINY, f"output_dir={out}", override)
    assert f"tiny.yaml: {message}" in err


def test_in_range_edges_load() -> None:
    from selfreward.config import load_config

    edges = ["iterations=0", "judge.temperature=0", "judge.top_p=1", "judge.min_digit_mass=0", "ppo.reward_clip=null"]
    cfg = load_config(TINY, [*edges, "sft.max_steps=-1", "run_name=my-run_2.b"])
    assert cfg.iterations == 0 and cfg.ppo.reward_clip is None and cfg.run_name == "my-run_2.b"
