"""Finished stages reused across runs (`selfreward.store`): a stage with an equal chain and inputs is restored
instead of run, a changed one runs, a damaged store entry is detected and recomputed, two runs publishing at once
both finish with equal files, and `reuse: false` / `--no-reuse` computes everything. End to end on the tiny model:
a second run that changes only an iteration setting starts at iteration 1 with the seed SFT reused."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from selfreward.artifacts import IterPaths, read_json, write_json
from selfreward.runs import StageRunner
from selfreward.store import StageStore


class Counter:
    def __init__(self) -> None:
        self.calls = 0


def run_stage(
    folder: Path, store: StageStore | None, setting: str, counter: Counter, delay: float = 0.0, chain: str = "c"
) -> StageRunner:
    """One stage, `make`, that writes out.json and a folder model/ from `setting` (like a data and a model)."""
    it = IterPaths(folder)
    it.root.mkdir(parents=True, exist_ok=True)
    runner = StageRunner(it, False, False, chain, 1, ("make",), store=store)

    def make() -> dict:
        counter.calls += 1
        time.sleep(delay)
        write_json(it.root / "out.json", {"setting": setting})
        (it.root / "model").mkdir(exist_ok=True)
        (it.root / "model" / "weights.bin").write_bytes(setting.encode() * 1000)
        return {"made_from": setting}

    writes = {"out": it.root / "out.json", "model": it.root / "model"}
    runner.run("make", {"setting": setting}, make, lambda: ["inputs"], writes)
    return runner


def test_an_equal_stage_is_restored_not_run_and_says_from_where(tmp_path: Path, caplog) -> None:
    store, counter = StageStore(tmp_path / "stages"), Counter()
    run_stage(tmp_path / "a" / "iter_1", store, "x", counter)
    assert counter.calls == 1
    write_json(tmp_path / "b" / "manifest.json", {"command": ["selfreward"]})
    with caplog.at_level(logging.INFO, logger="selfreward.runs"):
        runner = run_stage(tmp_path / "b" / "iter_1", store, "x", counter)
    assert counter.calls == 1  # not run again
    assert "iter_1/make: reused from" in caplog.text
    b = tmp_path / "b" / "iter_1"
    assert read_json(b / "out.json") == {"setting": "x"}
    assert (b / "model" / "weights.bin").read_bytes() == (
        tmp_path / "a" / "iter_1" / "model" / "weights.bin"
    ).read_bytes()
    stage = read_json(b / "metrics.json")["stages"]["make"]
    assert stage["made_from"] == "x" and stage["reused_from"] == f"{tmp_path / 'a' / 'iter_1'}/make"
    assert read_json(runner.it.marker("make"))["reused_from"] == stage["reused_from"]
    assert read_json(tmp_path / "b" / "manifest.json")["reused"] == [
        {"stage": "iter_1/make", "from": stage["reused_from"]}
    ]
    assert runner.ran  # what comes after it in the chain runs (or is reused) too


def test_a_changed_setting_or_chain_runs(tmp_path: Path) -> None:
    store, counter = StageStore(tmp_path / "stages"), Counter()
    run_stage(tmp_path / "a" / "iter_1", store, "x", counter)
    run_stage(tmp_path / "b" / "iter_1", store, "y", counter)
    run_stage(tmp_path / "c" / "iter_1", store, "x", counter, chain="another model")
    assert counter.calls == 3
    assert read_json(tmp_path / "b" / "iter_1" / "out.json") == {"setting": "y"}


def test_a_damaged_entry_is_detected_and_recomputed(tmp_path: Path, caplog) -> None:
    store, counter = StageStore(tmp_path / "stages"), Counter()
    run_stage(tmp_path / "a" / "iter_1", store, "x", counter)
    (entry,) = [p for p in (tmp_path / "stages").iterdir() if not p.name.startswith(".")]
    weights = entry / "model" / "weights.bin"
    weights.unlink()  # a hard link: replace it rather than write through it into run a
    weights.write_bytes(b"damaged")
    with caplog.at_level(logging.WARNING, logger="selfreward.store"):
        run_stage(tmp_path / "b" / "iter_1", store, "x", counter)
    assert counter.calls == 2 and "damaged" in caplog.text
    assert (tmp_path / "b" / "iter_1" / "model" / "weights.bin").read_bytes() == b"x" * 1000
    assert (tmp_path / "a" / "iter_1" / "model" / "weights.bin").read_bytes() == b"x" * 1000
    assert (entry / "model" / "weights.bin").read_bytes() == b"x" * 1000  # published again, whole


def test_two_runs_at_once_both_finish_with_equal_files(tmp_path: Path) -> None:
    store, counter = StageStore(tmp_path / "stages"), Counter()
    threads = [
        threading.Thread(target=run_stage, args=(tmp_path / name / "iter_1", store, "x", counter, 0.2))
        for name in ("a", "b")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counter.calls == 2  # both computed: neither found the other's entry
    for name in ("a", "b"):
        assert read_json(tmp_path / name / "iter_1" / "out.json") == {"setting": "x"}
    entries = list((tmp_path / "stages").iterdir())
    assert len(entries) == 1 and (entries[0] / "entry.json").exists()  # one entry, no leftover scratch folder
    run_stage(tmp_path / "c" / "iter_1", store, "x", counter)
    assert counter.calls == 2


def test_without_a_store_everything_is_computed(tmp_path: Path) -> None:
    counter = Counter()
    run_stage(tmp_path / "a" / "iter_1", None, "x", counter)
    run_stage(tmp_path / "b" / "iter_1", None, "x", counter)
    assert counter.calls == 2


def test_a_second_run_changing_only_the_pairs_reuses_the_seed_sft_and_what_it_shares(
    tmp_path: Path, tiny_model: Path, caplog
) -> None:
    from selfreward.loop.pipeline import iterate
    from tests.test_pipeline import tiny_config

    common = ("reuse=true", f"cache_dir={tmp_path / 'cache'}")
    first = iterate(tiny_config(tmp_path, tiny_model, "run_name=first", *common), 1)
    with caplog.at_level(logging.INFO, logger="selfreward.runs"):
        start = time.perf_counter()
        second = iterate(tiny_config(tmp_path, tiny_model, "run_name=second", "pairs.source=checker", *common), 0)
        seed_sft_s = time.perf_counter() - start
        iterate(tiny_config(tmp_path, tiny_model, "run_name=second", "pairs.source=checker", *common), 1)
    reused = {line.split(": reused from")[0].split()[-1] for line in caplog.text.splitlines() if "reused from" in line}
    # the seed SFT and iteration 1's generation stages are the first run's; pairs and DPO are computed
    assert reused == {"iter_0/sft_data", "iter_0/sft", "iter_1/prompts", "iter_1/candidates", "iter_1/judgements"}
    assert "iter_0/sft: running" not in caplog.text  # no trainer started for the seed SFT
    assert seed_sft_s < 30
    for name in ("model/model.safetensors", "sft_data.jsonl"):
        assert (second.iteration(0).root / name).read_bytes() == (first.iteration(0).root / name).read_bytes()
    assert (second.iteration(1).root / "judgements.jsonl").read_bytes() == (
        first.iteration(1).root / "judgements.jsonl"
    ).read_bytes()
    manifest = json.loads(second.manifest.read_text())
    assert {r["stage"] for r in manifest["reused"]} >= {"iter_1/prompts", "iter_1/judgements"}

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="selfreward.runs"):
        iterate(
            tiny_config(tmp_path, tiny_model, "run_name=third", "reuse=false", f"cache_dir={tmp_path / 'cache'}"), 0
        )
    assert "reused from" not in caplog.text and "iter_0/sft: running" in caplog.text


def test_a_code_change_is_never_served_from_the_store(tmp_path: Path, monkeypatch) -> None:
    store, counter = StageStore(tmp_path / "stages"), Counter()
    run_stage(tmp_path / "a" / "iter_1", store, "x", counter)
    monkeypatch.setattr("selfreward.store.code_version", lambda: "git:another-commit")
    run_stage(tmp_path / "b" / "iter_1", store, "x", counter)
    assert counter.calls == 2


def test_a_corrupt_entry_file_counts_as_damaged(tmp_path: Path) -> None:
    store, counter = StageStore(tmp_path / "stages"), Counter()
    run_stage(tmp_path / "a" / "iter_1", store, "x", counter)
    (entry,) = [p for p in (tmp_path / "stages").iterdir() if not p.name.startswith(".")]
    (entry / "entry.json").write_text("{not json")
    run_stage(tmp_path / "b" / "iter_1", store, "x", counter)
    assert counter.calls == 2 and json.loads((entry / "entry.json").read_text())["files"]


def test_a_stage_a_setting_adds_before_finished_ones_is_refused_unless_forced(tmp_path: Path) -> None:
    """Turning on a stage (e.g. the meta-judge) in a finished run would otherwise redo everything after it."""
    import pytest

    from selfreward.runs import StageChanged

    it = IterPaths(tmp_path / "iter_1")
    it.root.mkdir(parents=True)
    ran: list[str] = []

    def stages(names: tuple[str, ...], force: bool = False) -> None:
        runner = StageRunner(it, force, False, "c", 1, names)
        for name in names:
            runner.run(name, {}, lambda name=name: ran.append(name) or {}, lambda: [])

    stages(("a", "c"))
    with pytest.raises(StageChanged, match="iter_1/b is a stage this config adds before finished ones"):
        stages(("a", "b", "c"))
    assert ran == ["a", "c"]
    stages(("a", "b", "c"), force=True)
    assert ran == ["a", "c", "b", "c"]
