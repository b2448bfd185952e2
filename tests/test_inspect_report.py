"""`selfreward inspect` and `selfreward report` on hand-made runs: the numbers shown are the
numbers in the files, unfinished runs do not crash them, and the HTML renders in a browser.

Nothing here imports torch: the runs are written by `make_run` below.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from selfreward.artifacts import RunPaths, write_json, write_jsonl
from selfreward.cli import main
from selfreward.config import PairsConfig
from selfreward.loop.pairs import make_pairs
from selfreward.records import to_row
from selfreward.reporting.inspection import inspect_run, load_iteration, parse_where, select_pairs, summarize
from selfreward.reporting.report import build_report, png_size, write_report
from selfreward.reporting.summary import WhereError

ROOT = Path(__file__).resolve().parent.parent
STALE = 987654
"""Written into every metrics.json count the tools must not use: the files are the truth."""

# Judge sample scores per prompt, per candidate (None: the sample did not parse).
NORMAL_1 = [
    [[5, 4], [2, 2], [None, 3]],  # 4.5 vs 2: pair, margin 2.5
    [[3, 3], [3, 3], [3, 3]],  # tie
    [[None, None], [4, 4], [1, None]],  # 4 vs 1: margin 3
    [[0, 0], [5, 5], [2, 3]],  # 5 vs 0: margin 5
]  # 24 samples, 4 failures: 16.7%
NORMAL_2 = [
    [[4, 4], [1, 1]],  # margin 3
    [[2, 2], [3, 3]],  # margin 1
    [[5, 5], [5, 4]],  # margin 0.5
]  # 12 samples, 0 failures
ALL_TIES = [[[3, 3], [3, 3]], [[2, 2], [2, 2]]]
ALL_FAIL = [[[None, None], [None, None]], [[None, None], [None, None]]]
RESULTS = {
    "judge_eval.json": {"rows": [{"judge": "M0", "agreement": 0.8125, "n": 48}, {"judge": "M1", "agreement": 0.71}]},
    "compare.json": {"model": "iter_2", "win_rate": 0.625, "pairs": {"wins": 5}},
}
STAGE_FILES = ("prompts", "candidates", "judgements", "pairs", "dpo")


def make_iteration(run: RunPaths, k: int, scores: list, stages: tuple[str, ...] = STAGE_FILES) -> None:
    """Write iter_k with the given judge scores, up to and including the listed stages."""
    it = run.iteration(k)
    it.root.mkdir(parents=True, exist_ok=True)
    prompts = [
        {"prompt_id": f"i{k}-p{i}", "text": f"Question {i} of iteration {k}?", "source": "x"}
        for i in range(len(scores))
    ]
    candidates, judgements = [], []
    for i, per_prompt in enumerate(scores):
        for j, samples in enumerate(per_prompt):
            cid = f"i{k}-p{i}-c{j}"
            text = f"Answer {j} <script>alert('x')</script> [bold]not markup[/bold]" if j == 0 else f"Answer {j}"
            candidates.append(
                dict(candidate_id=cid, prompt_id=f"i{k}-p{i}", text=text, num_tokens=10 + 7 * j + k)
                | {"finish_reason": "length" if j == 2 else "stop"}
            )
            rows = [
                {"text": f"Judged {cid} <b>well</b>.\nScore: {s}", "score": s, "error": None, "probs": None}
                if s is not None
                else {"text": f"Rambling about {cid}", "score": None, "error": "no_score_line", "probs": None}
                for s in samples
            ]
            parsed = [s for s in samples if s is not None]
            mean = sum(parsed) / len(parsed) if parsed else None
            judgements.append(
                dict(candidate_id=cid, prompt_id=f"i{k}-p{i}", score=mean, num_parsed=len(parsed), samples=rows)
            )
    # the rules of the files being inspected (no noise band, cut-off answers allowed): these tests are about inspect
    pairs, dropped = make_pairs(prompts, candidates, judgements, PairsConfig(noise_z=0.0, allow_truncated_chosen=True))
    stale = {"prompts_kept": STALE, "candidates": STALE, "parse_failure_rate": 0.5, "pairs": STALE}
    metrics: dict = {"iteration": k, "stages": {}}
    if "prompts" in stages:
        write_jsonl(it.prompts, prompts)
        write_jsonl(it.prompts_rejected, [{"text": "hi", "reason": "too_short", "detail": ""}] * 2)
        metrics["stages"]["prompts"] = stale
    if "candidates" in stages:
        write_jsonl(it.candidates, candidates)
        metrics["stages"]["candidates"] = stale
    if "judgements" in stages:
        write_jsonl(it.judgements, judgements)
        metrics["stages"]["judgements"] = stale
    if "pairs" in stages:
        write_jsonl(it.pairs, [to_row(p) for p in pairs])
        metrics["stages"]["pairs"] = {**stale, "prompts_without_pair": dropped}
    if "dpo" in stages:
        steps = [
            {
                "loss": 0.69 - 0.05 * s,
                "rewards/margins": 0.02 * s,
                "rewards/accuracies": 0.5,
                "step": s,
                "epoch": s / 4,
            }
            for s in range(1, 5)
        ]
        write_jsonl(it.dpo_log, [*steps, {"train_runtime": 3.0, "step": 4}] if pairs else [])
        metrics["stages"]["dpo"] = {"skipped": not pairs, "pairs": len(pairs), "last_loss": STALE}
    write_json(it.metrics, metrics)


def make_run(tmp_path: Path, iterations: list[list], results: bool = True) -> RunPaths:
    run = RunPaths(tmp_path / "iterations" / "demo")
    for k, scores in enumerate(iterations, 1):
        make_iteration(run, k, scores)
    write_json(run.manifest, {"command": ["selfreward", "iterate"], "git_sha": "abc123", "time": "2025-01-01"})
    if results:
        for name, obj in RESULTS.items():
            write_json(run.root / name, obj)
    return run


def printed(run: RunPaths, **kwargs: object) -> str:
    console = Console(record=True, width=220)
    inspect_run(run.root, console=console, **kwargs)
    return console.export_text()


def table_row(text: str, first_cell: str) -> list[str]:
    """The cells of the table row whose first cell is `first_cell`."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in:\n{text}")


def count_lines(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def failure_rate(path: Path) -> float:
    samples = [s for line in path.read_text().splitlines() for s in json.loads(line)["samples"]]
    return sum(s["score"] is None for s in samples) / len(samples)


# --------------------------------------------------------------------------- inspect


def test_overview_numbers_match_the_files(tmp_path: Path) -> None:
    run = make_run(tmp_path, [NORMAL_1, NORMAL_2])
    out = printed(run)
    assert str(STALE) not in out
    for k in (1, 2):
        it = run.iteration(k)
        pairs = [json.loads(line) for line in it.pairs.read_text().splitlines()]
        row = table_row(out, str(k))
        assert row[1] == str(count_lines(it.prompts))
        assert row[2] == str(count_lines(it.candidates))
        assert row[3] == f"{100 * failure_rate(it.judgements):.1f}%"
        assert row[5] == str(len(pairs))
        assert row[6] == f"{sum(p['chosen_tokens'] for p in pairs) / len(pairs):.1f}"
        assert row[8] == "0.4900"  # the last loss of dpo_log.jsonl
    assert table_row(out, "1")[3] == "16.7%" and table_row(out, "1")[5] == "3"
    assert table_row(out, "2")[3] == "0.0%" and table_row(out, "2")[5] == "3"
    # the optional results, shown generically
    assert table_row(out, "M0") == ["M0", "0.8125", "48"]
    assert table_row(out, "M1") == ["M1", "0.71", "—"]
    assert table_row(out, "win_rate") == ["win_rate", "0.625"]


def test_iteration_detail(tmp_path: Path) -> None:
    run = make_run(tmp_path, [NORMAL_1, NORMAL_2])
    out = printed(run, k=1, show=2, sort="margin")
    assert table_row(out, "prompts generated")[1] == "6"
    assert table_row(out, "prompts rejected")[1:] == ["2", "too_short 2"]
    assert table_row(out, "candidates")[1:] == ["12", "truncated 4, empty 0"]
    assert table_row(out, "parse failures")[1:] == ["4", "16.7% of samples; no_score_line 4"]
    assert table_row(out, "candidates scored")[1:] == ["11", "unscored 1"]
    assert table_row(out, "pairs")[1] == "3"
    assert table_row(out, "prompts without pair")[1:] == ["1", "tie 1"]
    assert table_row(out, "DPO steps")[1] == "4"
    # score histogram of the 11 means 4.5 2 3 | 3 3 3 | 4 1 | 0 5 2.5, rounded half to even as in judge.py
    assert [table_row(out, str(s))[1] for s in range(6)] == ["1", "1", "2", "4", "2", "1"]
    assert table_row(out, "unscored")[1] == "1"
    assert [table_row(out, b)[1] for b in ("0–1", "1–2", "2–3", "3–4", "4–5")] == ["0", "0", "1", "1", "1"]
    assert "example pairs: 2 of 3 (3 in pairs.jsonl)" in out
    # largest margin first; model text is printed literally, not as rich markup
    assert out.index("i1-p3  margin 5.00") < out.index("i1-p2  margin 3.00")
    assert "i1-p0  margin" not in out
    assert "[bold]not markup[/bold]" in out
    assert "Judged i1-p3-c1 <b>well</b>. Score: 5" in out  # the judge's first sample for the chosen one


def test_where_filters_and_sorts(tmp_path: Path) -> None:
    run = make_run(tmp_path, [NORMAL_1])
    pairs = load_iteration(run, 1).pairs
    assert [p["margin"] for p in select_pairs(pairs, ["margin>=3"], "margin")] == [5.0, 3.0]
    assert [p["prompt_id"] for p in select_pairs(pairs, ["rejected_score==0"])] == ["i1-p3"]
    assert select_pairs(pairs, ["margin > 2", "chosen_tokens<100", "margin != 5"]) == [
        p for p in pairs if p["prompt_id"] in ("i1-p0", "i1-p2")
    ]
    lengths = [p["chosen_tokens"] + p["rejected_tokens"] for p in select_pairs(pairs, sort="length")]
    assert lengths == sorted(lengths, reverse=True)
    assert parse_where(" margin >= -1.5 ") == ("margin", ">=", -1.5)
    out = printed(run, k=1, show=5, where=["margin<4"])
    assert "example pairs: 2 of 2 matching margin<4 (3 in pairs.jsonl)" in out


@pytest.mark.parametrize("expr", ["margin=>2", "foo>1", "margin>two", "margin", "prompt_id==3", "margin>=2;"])
def test_bad_where_is_a_one_line_error(tmp_path: Path, expr: str, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path, [NORMAL_1])
    with pytest.raises(WhereError):
        parse_where(expr)
    assert main(["inspect", str(run.root), "--iter", "1", "--where", expr]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and repr(expr) in lines[0] and lines[0].startswith("selfreward: error:")
    assert captured.out == ""


def test_zero_pairs_and_all_parse_failures(tmp_path: Path) -> None:
    run = make_run(tmp_path, [ALL_TIES, ALL_FAIL])
    assert count_lines(run.iteration(1).pairs) == 0 and count_lines(run.iteration(2).pairs) == 0
    out = printed(run)
    assert table_row(out, "1") == ["1", "2", "4", "0.0%", "2.50", "0", "—", "—", "skipped"]
    assert table_row(out, "2") == ["2", "2", "4", "100.0%", "—", "0", "—", "—", "skipped"]
    out = printed(run, k=2, show=3)
    assert table_row(out, "parse failures")[1:] == ["8", "100.0% of samples; no_score_line 8"]
    assert table_row(out, "candidates scored")[1:] == ["0", "unscored 4"]
    assert table_row(out, "prompts without pair")[1:] == ["2", "fewer_than_2_scored 2"]
    assert table_row(out, "unscored")[1] == "4"
    assert "example pairs: 0 of 0 (0 in pairs.jsonl)" in out
    s = summarize(load_iteration(run, 1))
    assert (s.pairs, s.mean_margin, s.dpo_skipped, s.dpo_steps) == (0, None, True, 0)


def test_missing_stages_and_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path, [NORMAL_1], results=False)
    make_iteration(run, 2, NORMAL_2, stages=("prompts", "candidates"))
    run.iteration(3).root.mkdir()  # started, nothing written
    out = printed(run)
    assert table_row(out, "2") == ["2", "3", "6", "—", "—", "—", "—", "—", "—"]
    assert table_row(out, "3") == ["3", *["—"] * 8]
    assert "judge_eval" not in out and "compare" not in out
    out = printed(run, k=2)
    assert table_row(out, "candidates")[1] == "6" and table_row(out, "pairs")[1] == "—"
    assert "pairs.jsonl: not written yet" in out
    assert "pairs.jsonl: not written yet" in printed(run, k=3)
    assert main(["inspect", str(run.root), "--iter", "9"]) == 2
    assert "no such iteration (present: 1, 2, 3)" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "nope")]) == 2
    html = build_report(run)
    assert 'iteration 2</h3><p class="note">pairs.jsonl not written yet' in html
    assert "judge_eval" not in html


def test_modules_do_not_import_torch() -> None:
    code = (
        "import sys, selfreward.cli, selfreward.reporting.inspection, selfreward.reporting.report; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- report

_IMG = re.compile(r'<img alt="[^"]*" width="(\d+)" height="(\d+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)">')


def check_images(html: str) -> int:
    """Every <img> is a base64 PNG whose pixel size is the width and height given; returns the count."""
    found = _IMG.findall(html)
    assert len(found) == html.count("<img")
    for width, height, data in found:
        size = png_size(base64.b64decode(data))
        assert size == (int(width), int(height)) and size[0] > 100 and size[1] > 100
    return len(found)


def test_report_matches_the_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path, [NORMAL_1, NORMAL_2, ALL_FAIL])
    assert main(["report", str(run.root)]) == 0
    path = run.root / "report.html"
    assert capsys.readouterr().out.strip() == str(path)
    html = path.read_text()
    assert check_images(html) == 3  # scores, length drift, DPO curves
    for k in (1, 2, 3):
        n = count_lines(run.iteration(k).pairs)
        assert f"iteration {k}: {n} pairs</h3>" in html
        assert html.count(f"<summary>i{k}-p") == n
    assert "<td>16.7%</td>" in html and "<td>100.0%</td>" in html
    assert str(STALE) not in html
    # optional results as tables
    assert "<h2>judge_eval.json</h2>" in html and "<td>0.8125</td>" in html and "<td>0.625</td>" in html
    # justifications are there, and every bit of run text is escaped
    assert "Judged i1-p3-c1 &lt;b&gt;well&lt;/b&gt;." in html and "parse error: no_score_line" in html
    assert "<script" not in html and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert "<b>well</b>" not in html
    assert not re.search(r"(src|href)=\"?(https?:)?//", html)


def test_report_of_an_unfinished_run(tmp_path: Path) -> None:
    run = RunPaths(tmp_path / "empty")
    run.root.mkdir()
    assert "no iterations yet" in write_report(run.root).read_text()
    make_iteration(run, 1, NORMAL_1, stages=("prompts",))
    html = write_report(run.root).read_text()
    assert check_images(html) == 0 and html.count("no data yet") == 3


# --------------------------------------------------------------------------- in a browser


def chromium(*args: str, user_data: Path) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={user_data}",
    ]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=180)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not found (make install adds it where it can: apt-get)")
def test_report_renders_in_chromium(tmp_path: Path) -> None:
    run = make_run(tmp_path, [NORMAL_1, NORMAL_2])
    level = {"value": 0.2, "ci_low": 0.1, "ci_high": 0.3}
    rows = [
        {"model": m, "prompt_file": "prompts/eval/constraints.jsonl", "prompt_strict": level, "prompt_loose": level}
        for m in ("M0", "M1", "M2")
    ]
    write_json(run.evaluate, {"rows": rows})
    report = write_report(run.root)
    shot = tmp_path / "shot.png"
    out = chromium(f"--screenshot={shot}", "--window-size=1280,2000", report.as_uri(), user_data=tmp_path / "p1")
    assert shot.exists(), out.stderr[-2000:]
    data = shot.read_bytes()
    width, height = png_size(data)
    assert width >= 1000 and height >= 1000 and len(data) > 20_000
    from PIL import Image  # a matplotlib dependency

    with Image.open(shot) as image:
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20)) > 50  # not a blank page

    dom = chromium("--dump-dom", report.as_uri(), user_data=tmp_path / "p2").stdout
    assert "</html>" in dom and "<h2>Pairs</h2>" in dom
    assert check_images(dom) == 4
    # the first screen answers "did it improve?": its curves are the page's first image, before the details
    first_image = dom.index("<img")
    assert dom.index('id="improved"') < first_image < dom.index("<h2>Overview</h2>")
    assert "did it improve" in dom[first_image : dom.index(">", first_image)]
    assert dom.count("<details>") == count_lines(run.iteration(1).pairs) + count_lines(run.iteration(2).pairs)


def test_reason_results_are_shown_with_their_intervals(tmp_path: Path) -> None:
    """`selfreward reason` writes reason/reason.json; inspect and the report show its rows, each metric as
    value [95% interval] (n)."""
    run = make_run(tmp_path, [NORMAL_1], results=False)
    metric = {"value": 0.38333, "ci_low": 0.25, "ci_high": 0.5, "n": 60}
    rows = [
        {"method": "start", "round": 0, "maj@1": metric, "pass@4": {**metric, "value": 0.5333},
         "judge_accuracy": {"accuracy": 0.3333, "ci_low": 0.161, "ci_high": 0.515, "n_pairs": 66}},
        {"method": "expert_iteration", "round": 1, "maj@1": {**metric, "value": 0.4}, "pass@4": metric,
         "judge_accuracy": {"accuracy": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n_pairs": 0}},
    ]  # fmt: skip
    write_json(run.reason / "reason.json", {"rows": rows})
    out = printed(run)
    assert "reason/reason.json" in out
    assert table_row(out, "start") == ["start", "0", "0.383 [0.25, 0.50] (n=60)", "0.533 [0.25, 0.50] (n=60)",
                                       "0.333 [0.16, 0.52] (n=66)"]  # fmt: skip
    assert table_row(out, "expert_iteration")[2::2] == ["0.400 [0.25, 0.50] (n=60)", "—"]
    html = build_report(run)
    assert "<h2>reason/reason.json</h2>" in html and "0.400 [0.25, 0.50] (n=60)" in html and "—" in html
