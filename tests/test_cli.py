"""The command line: help, config errors as one line, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "selfreward", *args], cwd=ROOT, capture_output=True, text=True)


def test_help_lists_subcommands() -> None:
    out = cli("--help")
    assert out.returncode == 0
    for command in ("iterate", "config", "convert-model", "inspect", "report"):
        assert command in out.stdout


def test_bad_key_is_a_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("dpo:\n  betta: 0.2\n")
    out = cli("config", "--config", str(bad))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "dpo.betta" in lines[0] and "bad.yaml" in lines[0]


def test_config_prints_resolved_yaml() -> None:
    out = cli("config", "--config", "configs/tiny.yaml", "judge.samples=4")
    assert out.returncode == 0 and "samples: 4" in out.stdout


def test_iterate_zero_runs_only_the_seed_sft(tmp_path: Path, tiny_model: Path) -> None:
    """`--iterations 0` is a request (seed SFT only, iter_0), not "use the config's count"."""
    out = cli("iterate", "--config", "configs/tiny.yaml", "--iterations", "0", f"output_dir={tmp_path}")
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "tiny"
    assert (run / "iter_0" / "model" / "model.safetensors").exists() and not (run / "iter_1").exists()
    negative = cli("iterate", "--config", "configs/tiny.yaml", "--iterations", "-1", f"output_dir={tmp_path}")
    assert negative.returncode == 2 and len(negative.stderr.strip().splitlines()) == 1
    assert "--iterations" in negative.stderr


# A command that starts a child process (a stand-in for vLLM's engine core) and waits: `selfreward config`
# with cmd_config replaced, so nothing is loaded.
SLOW_COMMAND = """
import subprocess, sys, time
from selfreward import cli

def slow(args):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:  # the pid is printed inside `try`, so the test's SIGTERM cannot arrive before it
        print(child.pid, flush=True)
        time.sleep(120)
    finally:
        print("unwound", flush=True)

cli.cmd_config = slow
sys.exit(cli.main(["config"]))
"""


def test_sigterm_unwinds_exits_143_and_stops_children() -> None:
    import psutil

    proc = subprocess.Popen([sys.executable, "-c", SLOW_COMMAND], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    proc.terminate()  # SIGTERM
    assert proc.wait(timeout=60) == 143
    assert proc.stdout.read().strip() == "unwound"  # `finally` blocks ran
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE


def test_the_python_api_runs_the_documented_example_on_the_tiny_model(tmp_path, tiny_model) -> None:
    """The example of `selfreward.api`'s docstring: the same records the CLI writes."""
    import selfreward
    from selfreward import evaluate, iterate, load_config, plan

    assert set(selfreward.__all__) == {"load_config", "iterate", "evaluate", "judge_eval", "plan"}
    cfg = load_config(
        ROOT / "configs" / "tiny.yaml", [f"model={tiny_model}", f"output_dir={tmp_path}", "seed_sft=false"]
    )
    stages = plan(cfg)
    assert [s.stage for s in stages] == ["prompts", "candidates", "judgements", "dpo"] and all(s.fits for s in stages)
    run = iterate(cfg, iterations=1)
    assert run.iteration(1).model.exists()
    rows = evaluate(run, limit=2)
    assert [r["model"] for r in rows] == ["M0", "M1"] and rows[1]["prompts"] == 2
    assert json.loads(run.evaluate.read_text())["rows"] == json.loads(json.dumps(rows))
