"""End to end: the seed SFT (iter_0) and two iterations of the real pipeline on the tiny config, then resume
behaviour."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from selfreward.artifacts import RunPaths, read_jsonl
from selfreward.config import load_config
from selfreward.loop.pipeline import SEED_STAGES, STAGES, iterate, model_of_iteration
from selfreward.runs import StageChanged

ROOT = Path(__file__).resolve().parent.parent


def tiny_config(tmp_path: Path, tiny_model: Path, *overrides: str):
    return load_config(
        ROOT / "configs" / "tiny.yaml", [f"model={tiny_model}", f"output_dir={tmp_path}", "run_name=e2e", *overrides]
    )


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model: Path) -> RunPaths:
    tmp = tmp_path_factory.mktemp("runs")
    return iterate(tiny_config(tmp, tiny_model), 2)


def test_artifact_tree(run: RunPaths) -> None:
    assert run.config.exists() and run.manifest.exists() and run.log.exists()
    manifest = json.loads(run.manifest.read_text())
    assert {"torch", "transformers", "trl"} <= set(manifest["versions"])
    for k in (1, 2):
        it = run.iteration(k)
        for path in (it.prompts, it.prompts_rejected, it.candidates, it.judgements, it.pairs, it.dpo_log, it.metrics):
            assert path.exists(), path
        assert (it.model / "model.safetensors").exists()
        assert all(it.marker(s).exists() for s in STAGES)
    seed_sft = run.iteration(0)
    for path in (seed_sft.sft_data, seed_sft.sft_log, seed_sft.metrics, seed_sft.model / "model.safetensors"):
        assert path.exists(), path
    assert all(seed_sft.marker(s).exists() for s in SEED_STAGES)
    assert run.iterations() == [1, 2]


def test_the_progress_view_matches_the_runs_files(run: RunPaths) -> None:
    """The last stage the run reported: iteration 2's DPO, its optimiser steps as the trainer counted them."""
    state = json.loads((run.root / "progress.json").read_text())
    dpo = json.loads(run.iteration(2).metrics.read_text())["stages"]["dpo"]
    assert (state["run"], state["k"], state["total_iterations"]) == ("e2e", 2, 2)
    assert (state["stage"], state["stage_index"], state["stages"]) == ("dpo", 5, 5)
    assert state["done"] == state["total"] == dpo["optimizer_steps"] and state["unit"] == "optimiser steps"


def test_iteration_1_starts_from_the_seed_sft_model(run: RunPaths, tiny_model: Path) -> None:
    m = json.loads(run.iteration(0).metrics.read_text())
    assert set(m["stages"]) == set(SEED_STAGES) and m["start_model"] == str(tiny_model)
    assert m["stages"]["sft_data"]["examples"] == 8 == len(read_jsonl(run.iteration(0).sft_data))
    assert m["stages"]["sft"]["steps"] == 2
    m1 = weights(run.iteration(0).model)
    assert any(not (m1[k] == v).all() for k, v in weights(tiny_model).items())
    cfg = tiny_config(run.root.parent, tiny_model)
    assert model_of_iteration(cfg, run, 0) == str(run.iteration(0).model)
    assert json.loads(run.iteration(1).metrics.read_text())["start_model"] == str(run.iteration(0).model)
    assert json.loads(run.iteration(2).metrics.read_text())["start_model"] == str(run.iteration(1).model)


def test_rows_join_by_id(run: RunPaths) -> None:
    it = run.iteration(1)
    prompts = {r["prompt_id"] for r in read_jsonl(it.prompts)}
    candidates = read_jsonl(it.candidates)
    judgements = read_jsonl(it.judgements)
    assert len(prompts) == 6 and len(candidates) == 6 * 3
    assert {c["prompt_id"] for c in candidates} == prompts
    assert [j["candidate_id"] for j in judgements] == [c["candidate_id"] for c in candidates]
    assert all(len(j["samples"]) == 2 and "text" in j["samples"][0] for j in judgements)


def test_metrics_describe_every_stage(run: RunPaths) -> None:
    m = json.loads(run.iteration(1).metrics.read_text())
    assert set(m["stages"]) == set(STAGES)
    for stage in m["stages"].values():
        assert stage["wall_s"] >= 0 and stage["peak_rss_gib"] > 0
    assert m["stages"]["prompts"]["prompts_kept"] == 6
    assert m["stages"]["candidates"]["candidates"] == 18
    assert sum(m["stages"]["judgements"]["score_histogram"]) == 18
    assert m["stages"]["pairs"]["pairs"] == len(read_jsonl(run.iteration(1).pairs))
    assert m["engine"]["engine"] == "transformers" and m["engine"]["generated_tokens"] > 0


def test_pairs_are_trl_preference_data(run: RunPaths) -> None:
    import datasets
    from transformers import AutoTokenizer
    from trl.data_utils import is_conversational, maybe_apply_chat_template

    it = run.iteration(1)
    on_disk = datasets.load_from_disk(str(it.pairs_dataset))
    as_json = datasets.load_dataset("json", data_files=str(it.pairs), split="train")
    assert len(on_disk) == len(as_json) > 0
    row = on_disk[0]
    assert is_conversational(row)
    assert row["prompt"][0]["role"] == "user" and row["chosen"][0]["role"] == "assistant"
    assert row["chosen_score"] > row["rejected_score"]
    tok = AutoTokenizer.from_pretrained(it.model)
    rendered = maybe_apply_chat_template({k: row[k] for k in ("prompt", "chosen", "rejected")}, tok)
    assert rendered["prompt"].endswith("<|im_start|>assistant\n")


def test_model_weights_differ_between_iterations(run: RunPaths) -> None:
    m0, m1, m2 = weights(run.iteration(0).model), weights(run.iteration(1).model), weights(run.iteration(2).model)
    assert m0.keys() == m1.keys() == m2.keys()
    assert any(not (m0[k] == m1[k]).all() for k in m0)
    assert any(not (m1[k] == m2[k]).all() for k in m1)


def test_rerun_does_nothing_and_missing_marker_redoes_only_that_stage(run: RunPaths, tiny_model: Path, caplog) -> None:
    cfg = tiny_config(run.root.parent, tiny_model)
    it = run.iteration(2)
    before = {p: p.stat().st_mtime_ns for p in it.root.rglob("*") if p.is_file()}
    seed_sft = {p: p.stat().st_mtime_ns for p in run.iteration(0).root.rglob("*") if p.is_file()}
    with caplog.at_level(logging.INFO, logger="selfreward.runs"):
        iterate(cfg, 2)
    assert "running" not in caplog.text and "iter_0/sft: done, skipped" in caplog.text
    assert {p: p.stat().st_mtime_ns for p in it.root.rglob("*") if p.is_file()} == before
    assert {p: p.stat().st_mtime_ns for p in run.iteration(0).root.rglob("*") if p.is_file()} == seed_sft

    caplog.clear()
    it.marker("dpo").unlink()
    with caplog.at_level(logging.INFO, logger="selfreward.runs"):
        iterate(cfg, 2)
    ran = [line for line in caplog.text.splitlines() if line.endswith(": running")]
    assert len(ran) == 1 and "iter_2/dpo" in ran[0]
    assert it.pairs.stat().st_mtime_ns == before[it.pairs]
    assert it.marker("dpo").exists()


def test_changed_config_is_refused_unless_forced(run: RunPaths, tiny_model: Path) -> None:
    config, manifest = run.config.read_text(), run.manifest.read_text()
    changed = tiny_config(run.root.parent, tiny_model, "judge.samples=3")
    with pytest.raises(StageChanged, match="iter_1/judgements"):
        iterate(changed, 2)
    # a refused invocation leaves the record of the one that made the files
    assert run.config.read_text() == config and run.manifest.read_text() == manifest
    assert "samples: 2" in config
    assert read_jsonl(run.iteration(1).judgements)[0]["samples"].__len__() == 2  # nothing was overwritten
    with pytest.raises(StageChanged, match="iter_0/sft was made"):
        iterate(tiny_config(run.root.parent, tiny_model, "sft.learning_rate=0.5"), 2)
    with pytest.raises(StageChanged, match="iter_0/sft_data"):
        iterate(tiny_config(run.root.parent, tiny_model, "sft.max_examples=4"), 2)


def test_too_few_pairs_skips_dpo(tmp_path: Path, tiny_model: Path) -> None:
    run = iterate(tiny_config(tmp_path, tiny_model, "dpo.min_pairs=1000"), 1)
    m = json.loads(run.iteration(1).metrics.read_text())
    assert m["stages"]["dpo"]["skipped"] is True and "min_pairs" in m["stages"]["dpo"]["reason"]
    a, b = weights(run.iteration(1).model), weights(run.iteration(0).model)  # M1 = M0 of the loop = seed SFT
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_without_seed_sft_iteration_1_starts_from_the_model(tmp_path: Path, tiny_model: Path) -> None:
    cfg = tiny_config(tmp_path, tiny_model, "seed_sft=false", "dpo.min_pairs=1000")
    run = iterate(cfg, 1)
    assert not run.iteration(0).root.exists()
    assert model_of_iteration(cfg, run, 0) == str(tiny_model)
    a, b = weights(run.iteration(1).model), weights(tiny_model)
    assert all((a[k] == b[k]).all() for k in a)


def test_a_changed_model_redoes_the_next_iteration_in_a_new_invocation(tmp_path: Path, tiny_model: Path) -> None:
    """Upstream state comes from files, not memory: M_2 replaced after iteration 1 finished (as when its DPO
    was redone and the run killed right after) makes the next invocation redo all of iteration 2."""
    from safetensors.torch import load_file, save_file

    cfg = tiny_config(tmp_path, tiny_model)
    run = iterate(cfg, 2)
    invocations = sorted(run.invocations.glob("*.json"))
    assert len(invocations) == 1 and "config" in json.loads(invocations[0].read_text())
    iterate(cfg, 2)  # nothing to do: no new invocation record
    assert sorted(run.invocations.glob("*.json")) == invocations
    path = run.iteration(1).model / "model.safetensors"
    tensors = load_file(path)
    save_file({k: v + 0.01 for k, v in tensors.items()}, str(path), metadata={"format": "pt"})
    before = {s: run.iteration(2).marker(s).read_text() for s in STAGES}
    iteration_1 = {s: run.iteration(1).marker(s).stat().st_mtime_ns for s in STAGES}
    iterate(cfg, 2)
    after = {s: run.iteration(2).marker(s).read_text() for s in STAGES}
    assert all(after[s] != before[s] for s in STAGES)  # every stage of iteration 2 ran again ...
    assert {s: run.iteration(1).marker(s).stat().st_mtime_ns for s in STAGES} == iteration_1  # ... not iteration 1
    assert json.loads(after["prompts"])["fingerprint"] == json.loads(before["prompts"])["fingerprint"]  # same config
    assert len(sorted(run.invocations.glob("*.json"))) == 2


def test_a_share_of_prompts_carries_checkable_instructions_and_the_judge_is_measured_against_them(
    run: RunPaths,
) -> None:
    it = run.iteration(1)
    prompts = read_jsonl(it.prompts)
    checked = {p["prompt_id"]: p for p in prompts if p["instruction_id_list"]}
    assert len(checked) == round(0.5 * len(prompts)) > 0
    for p in checked.values():
        assert p["text"].startswith(p["base"]) and len(p["kwargs"]) == len(p["instruction_id_list"])
    for j in read_jsonl(it.judgements):
        if j["prompt_id"] in checked:
            n = len(checked[j["prompt_id"]]["instruction_id_list"])
            assert len(j["checks"]["strict"]) == len(j["checks"]["loose"]) == n
        else:
            assert j["checks"] is None
    metrics = json.loads(it.metrics.read_text())["stages"]["judgements"]["constraints"]
    assert metrics["checked_candidates"] == 3 * len(checked)
    assert metrics["judge_checker_pairs"] >= 0 and "judge_checker_agreement" in metrics
    # the next iteration's few-shot pool gets the model's own prompt, not the added instructions
    from selfreward.loop.pipeline import prompt_pool

    pool = prompt_pool(load_config(run.config), run, 2)
    assert all(p["base"] in pool and p["text"] not in pool for p in checked.values())


def test_evaluate_every_model_of_the_run_on_checkable_instructions(run: RunPaths, monkeypatch) -> None:
    from selfreward.evaluation import instructions

    cfg = load_config(run.config)
    rows = instructions.evaluate(cfg, run)
    assert [r["model"] for r in rows] == ["M0", "M1", "M2", "M3"]
    for r in rows:
        assert r["prompts"] == 6
        for m in instructions.MEASURES:
            assert 0 <= r[m]["ci_low"] <= r[m]["value"] <= r[m]["ci_high"] <= 1
        assert r["cut_off"] <= 6 and r["mean_tokens"] <= 16
    assert "gain_vs_M0" not in rows[0] and "gain_vs_M1" not in rows[1]
    gain = rows[2]["gain_vs_M1"]["prompt_strict"]
    assert gain["n"] == 6 and gain["ci_low"] <= gain["value"] <= gain["ci_high"]
    saved = json.loads(run.evaluate.read_text())["rows"]
    assert [r["model"] for r in saved] == ["M0", "M1", "M2", "M3"]
    answers = read_jsonl(run.evaluate_dir / "answers" / "M2.jsonl")
    assert len(answers) == 6 and all(len(a["strict"]) == len(a["instruction_id_list"]) for a in answers)

    # answers are reused while model, prompts and settings are unchanged: no engine starts again
    def no_engine(*args, **kwargs):
        raise AssertionError("an engine was started for cached answers")

    monkeypatch.setattr(instructions, "open_generator", no_engine)
    again = instructions.evaluate(cfg, run, models=[("M2", rows[2]["path"])])
    assert again[0]["prompt_strict"] == rows[2]["prompt_strict"]


def test_an_after_iteration_hook_can_stop_the_run(tmp_path: Path, tiny_model: Path) -> None:
    seen = []

    def stop_after_first(run: RunPaths, k: int) -> bool:
        seen.append(k)
        return True

    run = iterate(tiny_config(tmp_path, tiny_model, "seed_sft=false"), 2, after_iteration=stop_after_first)
    assert seen == [1]
    assert run.iteration(1).model.exists() and not run.iteration(2).root.exists()


def test_evaluator_directed_text_is_counted_every_iteration(run: RunPaths) -> None:
    from selfreward.judge_text import EVALUATOR_DIRECTED, evaluator_directed

    for k in (1, 2):
        it = run.iteration(k)
        stages = json.loads(it.metrics.read_text())["stages"]
        counted = stages["judgements"]["evaluator_directed"]
        candidates = read_jsonl(it.candidates)
        assert counted["of"] == len(candidates) and set(counted["by_style"]) == set(EVALUATOR_DIRECTED)
        assert counted["flagged"] == sum(1 for c in candidates if evaluator_directed(c["text"]))
        pairs = read_jsonl(it.pairs)
        assert stages["pairs"]["evaluator_directed_chosen"] == sum(
            1 for p in pairs if evaluator_directed(p["chosen"][0]["content"])
        )


def test_a_judge_that_learns_end_to_end(tmp_path: Path, tiny_model: Path) -> None:
    """The meta-judge, anchored rejection and the judge's accuracy on human labels after every iteration, on the
    tiny run: their stages run where they belong, their files join by id, and the numbers land in the metrics,
    judge_eval.json and the report."""
    import datasets

    from selfreward.evaluation.every_iteration import after_iteration
    from selfreward.loop.pipeline import stages_of
    from selfreward.reporting.report import build_report, judge_curves
    from selfreward.reporting.summary import load_iteration, summarize
    from tests.test_compare_judge_eval import write_labels

    labels = write_labels(tmp_path)
    cfg = tiny_config(
        tmp_path,
        tiny_model,
        "meta_judge.enabled=true",
        "meta_judge.share=0.5",
        "pairs.rejected_from=initial",
        f"eval.judge_labels=[{labels}]",
        "eval.judge_limit=2",
        "eval.persuasion_items=3",
    )
    run = iterate(cfg, 2, after_iteration=after_iteration(cfg))
    assert stages_of(cfg, 1) == ("prompts", "candidates", "judgements", "meta_judgements", "pairs", "dpo")
    assert stages_of(cfg, 2) == ("prompts", "anchors", "candidates", "judgements", "meta_judgements", "pairs", "dpo")
    one, two = run.iteration(1), run.iteration(2)
    assert not one.anchors.exists() and all(two.marker(s).exists() for s in stages_of(cfg, 2))

    # anchored rejection: iteration 2's rejected answers are the seed SFT model's, judged with the candidates
    anchors = read_jsonl(two.anchors)
    assert len(anchors) == 6 * 3 and all("-a" in a["candidate_id"] for a in anchors)
    judged = {j["candidate_id"] for j in read_jsonl(two.judgements)}
    assert {a["candidate_id"] for a in anchors} <= judged
    pairs = read_jsonl(two.pairs)
    assert pairs and all("-a" in p["rejected_id"] and "-c" in p["chosen_id"] for p in pairs)
    assert json.loads(two.metrics.read_text())["stages"]["pairs"]["rejected_from"] == "initial"

    # the meta-judge: an outcome for every candidate it judged, judge-role pairs within the share
    for it, candidates in ((one, 18), (two, 18)):  # the current model's candidates (not the anchors)
        m = json.loads(it.metrics.read_text())["stages"]
        assert sum(m["meta_judgements"]["outcomes"].values()) == candidates == len(read_jsonl(it.meta_judgements))
        judge_role = read_jsonl(it.judge_pairs)
        assert m["pairs"]["judge_pairs"] == len(judge_role) <= m["pairs"]["pairs"]  # share 0.5: at most as many
        kinds = datasets.load_from_disk(str(it.pairs_dataset))["kind"]
        assert kinds.count("judge") == len(judge_role) and kinds.count("answer") == m["pairs"]["pairs"]
        for j in judge_role:
            assert j["prompt"][0]["content"].startswith("You are grading") and j["chosen"] != j["rejected"]

    # the judge's accuracy on the labels: the seed SFT model and each new model, in metrics and judge_eval.json
    for k in (0, 1, 2):
        accuracy = json.loads(run.iteration(k).metrics.read_text())["judge_accuracy"]
        (m,) = accuracy.values()
        assert 0 <= m["accuracy"] <= 1 and m["n_pairs"] == 2  # the first 2 items: one human pair each
        assert m["direct_pairs"] == 2 and m["ci_low"] <= m["accuracy"] <= m["ci_high"]
    # the persuasion probe: each new model on iteration 1's 3 lowest-scored answers, a shift per style
    for k in (1, 2):
        shifts = json.loads(run.iteration(k).metrics.read_text())["persuasion"]
        assert set(shifts) == {"praise", "authority", "verification", "pleading", "instruction"}
        assert all(m["n"] == 3 and m["rose"] + m["fell"] <= 3 for m in shifts.values())
    robustness = json.loads((run.root / "judge_robustness.json").read_text())["rows"]
    assert sorted({r["judge"] for r in robustness}) == ["M2", "M3"] and len(robustness) == 10
    rows = json.loads(run.judge_eval.read_text())["rows"]
    assert sorted(r["model"] for r in rows) == ["iter_0", "iter_1", "iter_2"]
    summaries = [summarize(load_iteration(run, k)) for k in run.iterations()]
    curves = judge_curves(summaries, json.loads(run.iteration(0).metrics.read_text()))
    assert [t for t, *_ in curves["vs humans, rubric (labels)"]] == [1, 2, 3]  # M1 (seed SFT), M2, M3
    assert [t for t, *_ in curves["vs humans, both orders (labels)"]] == [1, 2, 3]
    html = build_report(run)
    assert "judge accuracy per model" in html and "new model as judge: labels.jsonl" in html
    assert "new model as judge: praise sentence" in html and "judge_robustness.json" in html
