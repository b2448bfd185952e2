"""Human-label loaders (real and hand-made files) and judge agreement metrics on hand-worked inputs."""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from selfreward.artifacts import DataError
from selfreward.evaluation.judge_metrics import (
    exact_match,
    five_best,
    kendall_tau,
    pairwise_accuracy,
    parse_failure_rate,
    ranking_metrics,
    score_distribution,
    spearman,
    top_is_best,
)
from selfreward.inputs import LabelledItem, load_labels

HUMAN_PAIRS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "human_pairs"


def write_rows(path: Path, rows: list[Any]) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


# --------------------------------------------------------------------------- loaders: real files


@pytest.mark.parametrize(
    ("name", "rows", "a_wins", "b_wins"),
    [("pandalm_testset_v1_majority.jsonl", 842, 398, 444), ("oasst_en100_best_vs_worst.jsonl", 212, 106, 106)],
)
def test_real_pairwise_files(name: str, rows: int, a_wins: int, b_wins: int) -> None:
    path = HUMAN_PAIRS / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    items = load_labels(str(path))
    assert len(items) == rows
    assert all(len(it.responses) == 2 and it.prompt for it in items)
    assert sum(it.human_ranks == [1, 2] for it in items) == a_wins
    assert sum(it.human_ranks == [2, 1] for it in items) == b_wins
    first = json.loads(path.read_text().splitlines()[0])
    assert items[0] == LabelledItem(
        first["prompt"],
        [first["response_a"], first["response_b"]],
        [2, 1] if first["human_preference"] == "b" else [1, 2],
    )


# --------------------------------------------------------------------------- loaders: hand-made files


def test_pairwise_file(tmp_path: Path) -> None:
    path = write_rows(
        tmp_path / "labels.jsonl",
        [
            {"prompt": "q1", "response_a": "x", "response_b": "y", "human_preference": "a", "extra": 1},
            "",
            {"prompt": "q2", "response_a": "x", "response_b": "y", "human_preference": "b"},
            {"prompt": "q3", "response_a": "x", "response_b": "y", "human_preference": "tie"},
        ],
    )
    assert load_labels(path) == [
        LabelledItem("q1", ["x", "y"], [1, 2]),
        LabelledItem("q2", ["x", "y"], [2, 1]),
        LabelledItem("q3", ["x", "y"], [1, 1]),
    ]


def test_ranked_file(tmp_path: Path) -> None:
    path = write_rows(
        tmp_path / "ranked.jsonl",
        [
            {"prompt": "q", "responses": ["a", "b", "c"], "human_ranks": [2, 1, 3]},
            {"prompt": "r", "responses": ["a", "b"], "human_ranks": [1, 1]},
        ],
    )
    assert load_labels(path) == [
        LabelledItem("q", ["a", "b", "c"], [2, 1, 3]),
        LabelledItem("r", ["a", "b"], [1, 1]),
    ]


def test_hh_rlhf_file(tmp_path: Path) -> None:
    prefix = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: What is 2+2?\n\nAssistant:"
    single = "\n\nHuman: Name a colour.\n\nAssistant:"
    path = write_rows(
        tmp_path / "hh.jsonl",
        [
            {"chosen": prefix + " It is 4.", "rejected": prefix + " It is 5.\n"},
            {"chosen": single + " Blue.", "rejected": single + " No."},
        ],
    )
    assert load_labels(path) == [
        LabelledItem("Human: Hi there\n\nAssistant: Hello!\n\nHuman: What is 2+2?", ["It is 4.", "It is 5."], [1, 2]),
        LabelledItem("Human: Name a colour.", ["Blue.", "No."], [1, 2]),
    ]


PAIR = {"prompt": "q", "response_a": "x", "response_b": "y", "human_preference": "a"}
RANKED = {"prompt": "q", "responses": ["a", "b", "c"], "human_ranks": [1, 2, 3]}
HH = {"chosen": "\n\nHuman: q\n\nAssistant: good", "rejected": "\n\nHuman: q\n\nAssistant: bad"}


@pytest.mark.parametrize(
    ("bad_row", "first", "message"),
    [
        ({"prompt": "q", "response_a": "x", "human_preference": "a"}, PAIR, "missing field 'response_b'"),
        ({**PAIR, "human_preference": "c"}, PAIR, """field 'human_preference' must be "a", "b" or "tie", got "c\""""),
        ({**PAIR, "human_preference": None}, PAIR, """must be "a", "b" or "tie", got null"""),
        ({**PAIR, "response_a": 3}, PAIR, "field 'response_a' must be a string, got 3"),
        ('{"prompt": "q", "response_a": ', PAIR, "invalid JSON"),
        ("[1, 2]", PAIR, "expected a JSON object, got list"),
        ({**RANKED, "human_ranks": [1, 2]}, RANKED, "field 'human_ranks' has 2 ranks for 3 responses"),
        ({**RANKED, "human_ranks": [1, 0, 2]}, RANKED, "field 'human_ranks' must be a list of positive integers"),
        ({**RANKED, "human_ranks": [1, 2.5, 3]}, RANKED, "field 'human_ranks' must be a list of positive integers"),
        ({**RANKED, "human_ranks": [1, True, 3]}, RANKED, "field 'human_ranks' must be a list of positive integers"),
        ({**RANKED, "responses": ["a"], "human_ranks": [1]}, RANKED, "must hold at least 2 responses, got 1"),
        ({**RANKED, "responses": "abc"}, RANKED, "field 'responses' must be a list of strings"),
        ({"prompt": "q", "responses": ["a", "b"]}, RANKED, "missing field 'human_ranks'"),
        ({"chosen": HH["chosen"]}, HH, "missing field 'rejected'"),
        ({**HH, "rejected": "Human: q\nAI: bad"}, HH, "field 'rejected' has no"),
        ({**HH, "rejected": "\n\nHuman: other\n\nAssistant: bad"}, HH, "differ before their final assistant turn"),
        (PAIR, HH, "missing field 'chosen'"),  # a line of another format
    ],
)
def test_malformed_line_names_file_line_and_field(tmp_path: Path, bad_row: Any, first: dict, message: str) -> None:
    path = write_rows(tmp_path / "labels.jsonl", [first, "", bad_row])
    with pytest.raises(DataError) as err:
        load_labels(path)
    text = str(err.value)
    assert text.startswith(f"{path}:3: ")
    assert message in text
    assert "\n" not in text


def test_bad_first_line_and_empty_or_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"labels.jsonl:1: invalid JSON"):
        load_labels(write_rows(tmp_path / "labels.jsonl", ["{nope"]))
    with pytest.raises(DataError, match=r"other.jsonl:2: unknown label format: .* got \[\"answer\", \"question\"\]"):
        load_labels(write_rows(tmp_path / "other.jsonl", ["", {"question": "q", "answer": "a"}]))
    with pytest.raises(DataError, match="no rows"):
        load_labels(write_rows(tmp_path / "empty.jsonl", ["", "  "]))
    with pytest.raises(DataError, match="no such file"):
        load_labels(str(tmp_path / "missing.jsonl"))


def test_long_bad_value_is_cut_to_one_short_line(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "labels.jsonl", [{**PAIR, "human_preference": "line\n" * 100}])
    with pytest.raises(DataError) as err:
        load_labels(path)
    assert "\n" not in str(err.value) and str(err.value).endswith("...")


def test_hub_name_goes_to_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    """A name that is not a path is `name[:split]` for datasets.load_dataset (a stand-in module here)."""
    calls: list[tuple[str, str]] = []

    def load_dataset(name: str, split: str) -> list[dict[str, Any]]:
        calls.append((name, split))
        return [HH, {"chosen": HH["chosen"]}] if split == "bad" else [HH]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # offline, a name that is not a file is an error
    assert load_labels("org/hh") == [LabelledItem("Human: q", ["good", "bad"], [1, 2])]
    assert load_labels("org/hh:train")[0].responses == ["good", "bad"]
    with pytest.raises(DataError, match=r"^org/hh\[bad\] row 1: missing field 'rejected'$"):
        load_labels("org/hh:bad")
    assert calls == [("org/hh", "test"), ("org/hh", "train"), ("org/hh", "bad")]


# --------------------------------------------------------------------------- pairwise accuracy


def test_pairwise_accuracy_hand_worked() -> None:
    """Item 1: (0,1) 4>2 right 1, (0,2) 4>3 right 1, (1,2) 2<3 reversed 0. Item 2: judge tie 0.5.
    Item 3: a None score, unscored. Item 4: humans tie, excluded. accuracy = 2.5 / 4 = 0.625.

    Bootstrap over the two items with counted pairs (2 of 3 pairs; 0.5 of 1): a resample is
    {1,1} 4/6, {1,2} 2.5/4 or {2,2} 0.5/1, each pure resample with probability 1/4, so the
    2.5th and 97.5th percentiles are 0.5 and 2/3.
    """
    scores: list[list[float | None]] = [[4, 2, 3], [3, 3], [5, None], [1, 5]]
    ranks = [[1, 2, 3], [1, 2], [2, 1], [1, 1]]
    result = pairwise_accuracy(scores, ranks)
    assert result["accuracy"] == 0.625
    assert (result["n_pairs"], result["judge_ties"], result["unscored"], result["human_ties"]) == (4, 1, 1, 1)
    assert result["n_items"] == 2
    assert result["ci_low"] == 0.5
    assert result["ci_high"] == pytest.approx(2 / 3)


def test_pairwise_accuracy_all_right_reversed_and_equal() -> None:
    ranks = [[1, 2], [2, 1], [3, 1, 2]]
    right = pairwise_accuracy([[5, 1], [0, 2], [1, 4, 3]], ranks)
    assert (right["accuracy"], right["ci_low"], right["ci_high"]) == (1.0, 1.0, 1.0)
    reversed_ = pairwise_accuracy([[1, 5], [2, 0], [4, 1, 2]], ranks)
    assert (reversed_["accuracy"], reversed_["ci_low"], reversed_["ci_high"]) == (0.0, 0.0, 0.0)
    # an all-equal judge ties every pair: 0.5 each
    equal = pairwise_accuracy([[3, 3], [3, 3], [3, 3, 3]], ranks)
    assert (equal["accuracy"], equal["judge_ties"], equal["n_pairs"]) == (0.5, 5, 5)


def test_pairwise_accuracy_nothing_to_count() -> None:
    result = pairwise_accuracy([[None, 3], [2, 2]], [[1, 2], [1, 1]])
    assert math.isnan(result["accuracy"]) and math.isnan(result["ci_low"]) and math.isnan(result["ci_high"])
    assert (result["n_pairs"], result["unscored"], result["human_ties"]) == (0, 1, 1)
    assert math.isnan(pairwise_accuracy([[1.0, math.nan]], [[1, 2]])["accuracy"])


def test_pairwise_bootstrap_is_seeded_and_brackets_the_estimate() -> None:
    scores: list[list[float | None]] = [[i % 3, (i * 7) % 5] for i in range(40)]
    ranks = [[1, 2]] * 40
    a, b = pairwise_accuracy(scores, ranks, seed=1), pairwise_accuracy(scores, ranks, seed=1)
    assert a == b
    assert a["ci_low"] < a["accuracy"] < a["ci_high"]
    narrow = pairwise_accuracy(scores, ranks, confidence=0.5)
    assert a["ci_low"] <= narrow["ci_low"] <= narrow["ci_high"] <= a["ci_high"]
    skipped = pairwise_accuracy(scores, ranks, n_resamples=0)
    assert skipped["accuracy"] == a["accuracy"] and math.isnan(skipped["ci_low"])


def test_shape_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="2 items of judge scores for 1"):
        pairwise_accuracy([[1, 2], [1, 2]], [[1, 2]])
    with pytest.raises(ValueError, match="item 0: 3 judge scores for 2 human ranks"):
        ranking_metrics([[1, 2, 3]], [[1, 2]])


# --------------------------------------------------------------------------- ranking metrics, per item


@pytest.mark.parametrize(
    ("scores", "ranks", "exact", "best"),
    [
        ([3, 2, 1], [1, 2, 3], True, 1.0),
        ([2, 2, 1], [1, 1, 2], True, 1.0),  # same tie on both sides: both holders of the top are human-best
        ([2, 2, 1], [1, 2, 3], False, 0.5),  # judge ties the top two: the human best is one of 2 -> 1/2
        ([1, 2, 3], [1, 2, 3], False, 0.0),
        ([1, 5, 5], [2, 1, 3], False, 0.5),
        ([4, 4, 4], [1, 2, 3], False, 1 / 3),  # all-equal judge: chance, not a hit
        ([4, 4, 4], [1, 1, 1], True, 1.0),
        ([5, 3], [2, 1], False, 0.0),
        ([3, 5, 1], [1, 1, 2], False, 1.0),  # humans tie for best: the judge's single top is one of them
    ],
)
def test_exact_match_and_top_is_best(scores: list[float], ranks: list[int], exact: bool, best: float) -> None:
    assert exact_match(scores, ranks) is exact
    assert top_is_best(scores, ranks) == pytest.approx(best)


@pytest.mark.parametrize(
    ("scores", "ranks", "hit"),
    [
        ([3, 5, 1], [2, 1, 3], True),  # the human best gets 5
        ([5, 3], [2, 1], False),  # 5 went to the worse one
        ([3, 3, 3], [1, 2, 3], False),  # a judge that ties everything at 3 is not a hit
        ([4.6, 2.0], [1, 2], True),  # expected scores: >= 4.5 is the top of the scale
        ([4.4, 2.0], [1, 2], False),
        ([1, 5], [1, 1], True),  # humans tie for best: either one with 5 counts
    ],
)
def test_five_best_as_the_paper_defines_it(scores: list[float], ranks: list[int], hit: bool) -> None:
    assert five_best(scores, ranks) is hit


@pytest.mark.parametrize(
    ("scores", "ranks", "rho", "tau"),
    [
        ([3, 2, 1], [1, 2, 3], 1.0, 1.0),
        ([1, 2, 3], [1, 2, 3], -1.0, -1.0),
        # x = [2.5, 2.5, 1], y = [3, 2, 1]: rho = 1.5 / sqrt(1.5 * 2); C = 2, D = 0, T_x = 1: tau = 2 / sqrt(2 * 3)
        ([2, 2, 1], [1, 2, 3], 1.5 / math.sqrt(3), 2 / math.sqrt(6)),
        # x = [3, 1, 2], y = [2.5, 2.5, 1] (ranks [1, 1, 2]); centred [1, -1, 0], [.5, .5, -1]: rho = 0;
        # pairs: (0,1) tied in y, (0,2) C, (1,2) D: tau = 0
        ([5, 1, 3], [1, 1, 2], 0.0, 0.0),
        # 4 responses: x = [4, 3, 1, 2], y = [4, 3, 2, 1]; d = [0, 0, -1, 1], rho = 1 - 6 * 2 / (4 * 15) = 0.8;
        # one discordant pair of 6: tau = (5 - 1) / 6
        ([9, 7, 1, 3], [1, 2, 3, 4], 0.8, 4 / 6),
        ([0.5, 4.0], [2, 1], 1.0, 1.0),  # the human best (rank 1) has the higher score
    ],
)
def test_spearman_and_kendall_hand_worked(scores: list[float], ranks: list[int], rho: float, tau: float) -> None:
    assert spearman(scores, ranks) == pytest.approx(rho)
    assert kendall_tau(scores, ranks) == pytest.approx(tau)


@pytest.mark.parametrize(("scores", "ranks"), [([3, 3, 3], [1, 2, 3]), ([1, 2, 3], [2, 2, 2]), ([4, 4], [1, 1])])
def test_correlations_of_a_constant_side_are_nan(scores: list[float], ranks: list[int]) -> None:
    assert math.isnan(spearman(scores, ranks))
    assert math.isnan(kendall_tau(scores, ranks))


# --------------------------------------------------------------------------- ranking metrics, averaged


def test_ranking_metrics_hand_worked() -> None:
    """Item 1 [3,2,1]/[1,2,3]: exact, top_is_best 1, rho 1, tau 1. Item 2 [2,2,1]/[1,2,3]: not exact,
    top_is_best 1/2 (judge top tied), rho 0.866, tau 0.816. Item 3 [4,4,4]/[1,2,3]: not exact, top_is_best
    1/3, rho and tau nan. Item 4 [1,None]: unscored. exact = 1/3, top_is_best = (1 + 1/2 + 1/3) / 3,
    five_best = 0 (no human-best response got 5), spearman = (1 + 0.866) / 2 over 2 items, kendall =
    (1 + 0.816) / 2 over 2 items, judge_top_ties = 2.
    """
    scores: list[list[float | None]] = [[3, 2, 1], [2, 2, 1], [4, 4, 4], [1, None]]
    ranks = [[1, 2, 3], [1, 2, 3], [1, 2, 3], [1, 2]]
    result = ranking_metrics(scores, ranks)
    assert result["exact_match"] == pytest.approx(1 / 3)
    assert result["five_best"] == 0.0
    assert result["top_is_best"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    assert result["judge_top_ties"] == 2
    assert result["spearman"] == pytest.approx((1 + 1.5 / math.sqrt(3)) / 2)
    assert result["kendall_tau"] == pytest.approx((1 + 2 / math.sqrt(6)) / 2)
    assert (result["n_spearman"], result["n_kendall"], result["n_items"], result["unscored_items"]) == (2, 2, 3, 1)


def test_ranking_metrics_all_equal_and_empty() -> None:
    result = ranking_metrics([[2, 2], [2, 2, 2]], [[1, 2], [2, 1, 3]])
    # an all-equal judge: no 5 for the human best, and the shared top is credited at chance (1/2, 1/3)
    assert (result["exact_match"], result["five_best"], result["judge_top_ties"]) == (0.0, 0.0, 2)
    assert result["top_is_best"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert math.isnan(result["spearman"]) and math.isnan(result["kendall_tau"])
    assert (result["n_spearman"], result["n_kendall"]) == (0, 0)
    empty = ranking_metrics([[None, None]], [[1, 2]])
    assert math.isnan(empty["exact_match"]) and empty["n_items"] == 0 and empty["unscored_items"] == 1


# --------------------------------------------------------------------------- score distribution, parse failures


def test_score_distribution() -> None:
    # rounded: 0, 2, 2 (2.5 rounds to even), 3, 5, 4 (3.5 rounds to even); None and nan skipped
    assert score_distribution([0, 2.4, 2.5, 2.6, 5, 3.5, None, math.nan]) == [1, 0, 2, 1, 1, 1]
    assert score_distribution([]) == [0] * 6
    assert score_distribution([4, 4, 4]) == [0, 0, 0, 0, 3, 0]
    with pytest.raises(ValueError, match="outside 0..5"):
        score_distribution([6])


def test_parse_failure_rate() -> None:
    assert parse_failure_rate([3, None, 4, None]) == 0.5
    assert parse_failure_rate([None]) == 1.0
    assert parse_failure_rate([0, 1.5]) == 0.0
    assert parse_failure_rate([]) == 0.0
