"""The package layout's import rules (README "Package layout"), read from the source with `ast`: no import circles,
`loop/` never imports `baselines/`, `evaluation/` or `reporting/`, and `reporting/` only reads run files (and
computes with `stats`)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "selfreward"
TOP_LEVEL = {
    "cli",
    "config",
    "records",
    "artifacts",
    "models",
    "generation",
    "server",
    "inputs",
    "runs",
    "errors",
    "cards",
    "tracking",
    "hub",
    "stats",
    "store",
    "progress",
}


def package_imports() -> dict[str, set[str]]:
    """module name (e.g. `loop.judge`) -> the selfreward modules it imports, anywhere in the file."""
    out: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("selfreward"):
                base = node.module.removeprefix("selfreward").lstrip(".")
                for alias in node.names:  # `from selfreward.loop import judge` imports loop.judge
                    full = f"{base}.{alias.name}" if base else alias.name
                    deps.add(full if (PACKAGE / (full.replace(".", "/") + ".py")).exists() else base)
            elif isinstance(node, ast.Import):
                deps |= {a.name.removeprefix("selfreward.") for a in node.names if a.name.startswith("selfreward.")}
        out[name] = {d for d in deps if d and d != name}
    return out


def test_loop_never_imports_baselines_evaluation_or_reporting() -> None:
    for module, deps in package_imports().items():
        if module.startswith("loop."):
            bad = {d for d in deps if d.split(".")[0] in ("baselines", "evaluation", "reporting")}
            assert not bad, f"{module} imports {bad}"


def test_reporting_only_reads_files() -> None:
    for module, deps in package_imports().items():
        if module.startswith("reporting."):
            bad = {d for d in deps if d.split(".")[0] != "reporting" and d not in ("artifacts", "errors", "stats")}
            assert not bad, f"{module} imports {bad}"


def test_top_level_modules_import_no_subpackage() -> None:
    for module, deps in package_imports().items():
        if module in TOP_LEVEL - {"cli"}:
            assert all(d in TOP_LEVEL for d in deps), f"{module} imports {deps - TOP_LEVEL}"


def test_reason_imports_only_top_level_modules() -> None:
    for module, deps in package_imports().items():
        if module.startswith("reason."):
            bad = {d for d in deps if d not in TOP_LEVEL and not d.startswith("reason")}
            assert not bad, f"{module} imports {bad}"


def test_constraints_import_only_top_level_modules() -> None:
    """The checkers, the generator and the IFEval reader are a library the loop, evaluation and reporting use."""
    for module, deps in package_imports().items():
        if module.startswith("constraints."):
            bad = {d for d in deps if d not in TOP_LEVEL and not d.startswith("constraints")}
            assert not bad, f"{module} imports {bad}"


def test_evaluation_never_imports_baselines_or_reporting() -> None:
    for module, deps in package_imports().items():
        if module.startswith("evaluation."):
            bad = {d for d in deps if d.split(".")[0] in ("baselines", "reporting")}
            assert not bad, f"{module} imports {bad}"


def test_every_loop_stage_declares_its_fingerprint_and_the_pipeline_uses_the_declarations() -> None:
    """A stage's fingerprint (config section, user files, the files it reads) is declared beside its `run`
    (`runs.Stage`), so the pipeline cannot forget an input: it never lists a fingerprint by hand."""
    from selfreward.loop import dpo, judge, meta_judge, pairs, prompt_gen, responses, sft
    from selfreward.runs import Stage

    stages = [m.STAGE for m in (prompt_gen, responses, judge, meta_judge, pairs, dpo)]
    stages += [responses.ANCHOR_STAGE, sft.DATA_STAGE, sft.TRAIN_STAGE]
    for stage in stages:
        assert isinstance(stage, Stage), stage
        assert stage.writes, f"{stage.name} declares no outputs: another run could not reuse it"
    source = (PACKAGE / "loop" / "pipeline.py").read_text()
    assert "stages.run(" not in source and source.count("stages.run_stage(") == len(stages)


def test_no_import_circles() -> None:
    graph = package_imports()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in graph.get(node, ()):
            assert state.get(dep) != 1, "import circle: " + " -> ".join([*path, node, dep])
            if dep not in state:
                visit(dep, [*path, node])
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module, [])
