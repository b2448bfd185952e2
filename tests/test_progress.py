"""The run-level progress view: the line's numbers, the progress file a stage writes (at most once a second, a log
line at each tenth), the tqdm class the engines report through, and `selfreward status` reading it."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from selfreward import progress

STATE = {
    "run": "default",
    "unit_name": "iteration",
    "k": 2,
    "total_iterations": 3,
    "stage": "judgements",
    "stage_index": 3,
    "stages": 5,
    "run_started": 1000.0,
    "stage_started": 1500.0,
    "eta_s": 1200.0,
}


def test_the_line_by_hand() -> None:
    state = {**STATE, "done": 412, "total": 768, "unit": "requests"}
    line = progress.line(state, now=1800.0)
    # elapsed since the run started: 800 s; ETA: 1200 s at the stage's start, 300 s of it gone
    assert line == "[default] iteration 2/3 · stage 3/5 judgements 412/768 requests · elapsed 13m20s · ETA 15m00s"
    assert progress.line({**STATE, "k": 0, "eta_s": None}, now=1000.0).startswith("[default] seed SFT · stage 3/5")
    assert progress.line({**STATE, "eta_s": None}, now=1000.0).endswith("ETA unknown")
    # no run ETA yet (iteration 1): 412 of 768 done in the 300 s since the stage started -> 356 left at that rate
    first = progress.line({**STATE, "eta_s": None, "done": 412, "total": 768, "unit": "requests"}, now=1800.0)
    assert first.endswith("elapsed 13m20s · stage ETA 4m19s")


def test_a_stage_writes_its_counts_and_logs_each_tenth(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="selfreward.progress"):
        progress.start(tmp_path, {**STATE, "stage_started": time.time()})
        for done in range(1, 21):
            progress.report(done, 20, "requests")
    progress.stop()
    state = json.loads((tmp_path / progress.FILE).read_text())
    assert (state["done"], state["total"], state["unit"], state["stage"]) == (20, 20, "requests", "judgements")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 11 and "judgements 2/20 requests" in lines[1] and "20/20" in lines[-1]  # 0/10 .. 10/10
    progress.report(5, 20, "requests")  # no stage open: nothing happens
    assert json.loads((tmp_path / progress.FILE).read_text())["done"] == 20


def test_the_reporting_bar_counts_requests_and_items_and_adds_up_a_stages_batches(tmp_path: Path) -> None:
    progress.start(tmp_path, STATE)
    for _ in progress.bar_class()(["p1", "p2"], desc="Rendering prompts"):  # vLLM's rendering: not the work
        pass
    bar = progress.bar_class()(total=3, desc="Processed prompts")
    for _ in range(3):
        bar.update(4)  # vLLM passes the outputs of one finished request (n=4): one request more
    assert bar.format_dict["elapsed"] >= 0  # vLLM reads it for its speed estimate
    assert json.loads((tmp_path / progress.FILE).read_text())["done"] == 3
    bar.close()
    items = []
    for item in progress.bar_class("batches", per_call=False)(["a", "b"], desc="batches"):
        time.sleep(0.15)  # slower than tqdm's own update interval: each item still counts once
        items.append(item)
    assert items == ["a", "b"]
    state = json.loads((tmp_path / progress.FILE).read_text())
    # the stage's second batch of work adds to the first: 3 requests + 2 batches
    assert (state["done"], state["total"], state["unit"]) == (5, 5, "batches")
    progress.stop()


def test_status_shows_the_running_stage(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    from selfreward import cli
    from selfreward.artifacts import write_json

    run = tmp_path / "default"
    run.mkdir()
    write_json(run / progress.FILE, {**STATE, "done": 10, "total": 40, "unit": "requests", "updated": time.time()})
    monkeypatch.setattr("selfreward.runs.lock_holder", lambda run: "PID 1 on host (selfreward iterate)")
    assert cli.main(["status", str(run)]) in (0, None)
    out = capsys.readouterr().out
    assert "now: [default] iteration 2/3 · stage 3/5 judgements 10/40 requests" in out
