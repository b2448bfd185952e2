from pathlib import Path

import pytest

from selfreward.config import ConfigError, RunConfig, dump_yaml, fingerprint, load_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_run_config_loads(path: Path) -> None:
    if path.name.startswith("accelerate"):
        import yaml

        assert yaml.safe_load(path.read_text())["distributed_type"] in {"DEEPSPEED", "FSDP"}
        return
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)


def test_default_yaml_is_the_dataclass_defaults() -> None:
    assert load_config(ROOT / "configs" / "default.yaml") == RunConfig()


def test_round_trip(tmp_path: Path) -> None:
    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["judge.samples=5", "dpo.lora=true"])
    path = tmp_path / "c.yaml"
    path.write_text(dump_yaml(cfg))
    again = load_config(path)
    assert again == cfg
    assert again.judge.samples == 5 and again.dpo.lora is True


def test_overrides_apply_with_types() -> None:
    cfg = load_config(None, ["judge.samples=3", "dpo.learning_rate=1e-5", "model=some/model", "engine.backend=vllm"])
    assert cfg.judge.samples == 3
    assert cfg.dpo.learning_rate == pytest.approx(1e-5)
    assert cfg.model == "some/model"


def test_unknown_key_in_yaml_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("judge:\n  sampels: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    message = str(e.value)
    assert "bad.yaml" in message and "judge.sampels" in message and "\n" not in message


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("judge.samples=three", "judge.samples"),
        ("judge.mode=vibes", "judge.mode"),
        ("dpo.lora=1", "dpo.lora"),
        ("nosuch.key=1", "nosuch"),
        ("judge", "key=value"),
    ],
)
def test_bad_override_is_a_one_line_error(override: str, needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_fingerprint_changes_with_config() -> None:
    a, b = RunConfig(), RunConfig()
    assert fingerprint(a.judge) == fingerprint(b.judge)
    b.judge.samples = 7
    assert fingerprint(a.judge) != fingerprint(b.judge)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["engine.backend=server"], "engine.backend is 'server': set engine.launch_server=true or engine.base_url"),
        (["engine.backend=server", "engine.base_url=gpu-box:8000"], "engine.base_url must start with http://"),
        (["engine.server_concurrency=0"], "engine.server_concurrency must be"),
        (["engine.server_args=--foo"], "engine.server_args"),
        (["launch.fsdp=true"], "launch.fsdp needs launch.num_processes >= 2, got 1"),
    ],
)
def test_server_settings_are_checked(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_config(None, overrides)


def test_a_server_config_loads() -> None:
    cfg = load_config(None, ["engine.backend=server", "engine.base_url=http://gpu-box:8000/v1"])
    assert cfg.engine.base_url == "http://gpu-box:8000/v1" and not cfg.engine.launch_server
    cfg = load_config(None, ["engine.backend=server", "engine.launch_server=true", 'engine.server_args=[--x, "2"]'])
    assert cfg.engine.server_args == ["--x", "2"]


def test_a_setting_added_later_changes_no_fingerprint_at_what_runs_did_before_it() -> None:
    """`sft.group_by_length` came after runs were made, which all trained on shuffled batches: false gives the
    fingerprint of the section without it (those runs stay valid), alone and inside a tuple; true, now the
    default, counts, so a seed SFT made without grouping is not taken for one made with it."""
    import dataclasses
    import hashlib
    import json

    grouped = RunConfig().sft
    assert grouped.group_by_length
    sft = dataclasses.replace(grouped, group_by_length=False)
    without = {k: v for k, v in dataclasses.asdict(sft).items() if k != "group_by_length"}
    assert fingerprint(sft) == hashlib.sha256(json.dumps([without], sort_keys=True).encode()).hexdigest()[:16]
    assert fingerprint(grouped) != fingerprint(sft) and fingerprint((grouped, "x")) != fingerprint((sft, "x"))
    assert fingerprint(RunConfig()) != fingerprint(dataclasses.replace(RunConfig(), sft=sft))
