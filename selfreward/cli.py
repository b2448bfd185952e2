"""The `selfreward` command (also `python -m selfreward`).

selfreward iterate --config configs/default.yaml --iterations 3 [key.sub=value ...]
selfreward config --config configs/tiny.yaml judge.samples=2      # print the resolved config
selfreward convert-model                                          # embedded GGUF -> safetensors, once
selfreward inspect iterations/default [--iter 2 --show 5 --sort margin --where 'margin>=2']
selfreward report iterations/default                              # -> iterations/default/report.html
"""

from __future__ import annotations

import argparse
import logging
import sys

from selfreward.artifacts import DataError
from selfreward.config import ConfigError, dump_yaml, load_config


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="configs/default.yaml", help="YAML config (default: %(default)s)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. judge.samples=3")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selfreward",
        description="Self-rewarding language models: the model writes prompts, answers them, judges its own "
        "answers, and is trained with DPO on its best vs worst answers.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("iterate", help="run or resume the self-rewarding loop (iterations/<run>/iter_K)")
    _add_config_args(p)
    p.add_argument("--iterations", "-n", type=int, default=None, help="number of iterations (default: config)")
    p.add_argument("--force", action="store_true", help="redo finished stages whose config changed")

    p = sub.add_parser("config", help="print the resolved config (defaults + YAML + overrides)")
    _add_config_args(p)

    p = sub.add_parser("convert-model", help="convert the embedded SmolLM2-135M-Instruct GGUF once")
    _add_config_args(p)

    p = sub.add_parser("inspect", help="print a run's stage funnel, scores, margins, lengths and example pairs")
    p.add_argument("run", help="run folder (iterations/<run>) or run name")
    p.add_argument("--iter", type=int, default=None, dest="iteration", help="one iteration in detail")
    p.add_argument("--show", type=int, default=3, help="example pairs to print with --iter (default: %(default)s)")
    p.add_argument("--sort", choices=["margin", "length"], default=None, help="example order (default: file order)")
    p.add_argument("--where", action="append", default=[], metavar="EXPR", help="filter pairs, e.g. margin>=2")

    p = sub.add_parser("report", help="write iterations/<run>/report.html: plots, tables and the pairs")
    p.add_argument("run", help="run folder (iterations/<run>) or run name")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "inspect":
            from selfreward.inspection import WhereError, inspect_run

            try:
                inspect_run(args.run, args.iteration, args.show, args.sort, args.where)
            except WhereError as e:
                print(f"selfreward: error: {e}", file=sys.stderr)
                return 2
            return 0
        if args.command == "report":
            from selfreward.report import write_report

            print(write_report(args.run))
            return 0
        cfg = load_config(args.config, args.overrides)
        if args.command == "config":
            print(dump_yaml(cfg), end="")
        elif args.command == "convert-model":
            from selfreward.models import resolve_model

            print(resolve_model(cfg.model, cfg.cache_dir))
        elif args.command == "iterate":
            from selfreward.pipeline import StageChanged, iterate

            try:
                iterate(cfg, args.iterations or cfg.iterations, force=args.force, argv=["selfreward", *argv])
            except StageChanged as e:
                print(f"selfreward: error: {e}", file=sys.stderr)
                return 2
    except (ConfigError, DataError) as e:
        print(f"selfreward: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
