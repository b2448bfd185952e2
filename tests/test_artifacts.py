import json
from pathlib import Path

import pytest

from selfreward.artifacts import DataError, atomic_path, read_jsonl, write_json, write_jsonl


def test_jsonl_round_trip(tmp_path: Path) -> None:
    rows = [{"a": 1, "text": "é ü \n"}, {"a": 2}]
    assert write_jsonl(tmp_path / "x.jsonl", rows) == 2
    assert read_jsonl(tmp_path / "x.jsonl") == rows


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    write_jsonl(path, [{"a": 1}])

    def rows():
        yield {"a": 2}
        raise RuntimeError("stage crashed halfway")

    with pytest.raises(RuntimeError):
        write_jsonl(path, rows())
    assert read_jsonl(path) == [{"a": 1}]
    assert [p.name for p in tmp_path.iterdir()] == ["x.jsonl"]  # no temp files left behind


def test_atomic_folder_replace(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        (tmp / "w").write_text("1")
    with pytest.raises(ValueError), atomic_path(folder) as tmp:
        tmp.mkdir()
        (tmp / "w").write_text("2")
        raise ValueError
    assert (folder / "w").read_text() == "1"
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        (tmp / "w").write_text("3")
    assert (folder / "w").read_text() == "3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_bad_json_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n{"a": \n')
    with pytest.raises(DataError, match=r"x\.jsonl:3: invalid JSON"):
        read_jsonl(path)


def test_missing_field_names_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"prompt_id": "a", "text": "t"}\n{"prompt_id": "b"}\n')
    with pytest.raises(DataError, match=r"x\.jsonl:2: missing field 'text'"):
        read_jsonl(path, required=["prompt_id", "text"])


def test_non_object_line(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text("[1, 2]\n")
    with pytest.raises(DataError, match=r"x\.jsonl:1: expected a JSON object"):
        read_jsonl(path)


def test_write_json(tmp_path: Path) -> None:
    write_json(tmp_path / "m.json", {"k": [1, 2]})
    assert json.loads((tmp_path / "m.json").read_text()) == {"k": [1, 2]}
