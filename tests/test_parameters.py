"""The one parameter schema: every chapter's parameters cell uses its names with its kinds, and an
unknown or mistyped parameter gets an error naming the parameter, what it should be and the valid names."""

import pytest
from notebooks import ROOT, notebook_defaults, page_id, toc_notebooks

from crosscoder_lib.book.parameters import SCHEMA, ParameterError, check_parameters, schema_rows

CHAPTERS = [nb for nb in toc_notebooks() if nb.parts[:2] == ("book", "chapters")]


@pytest.mark.parametrize("notebook", CHAPTERS, ids=page_id)
def test_every_chapter_names_its_parameters_from_the_schema(notebook):
    defaults = notebook_defaults(ROOT / notebook)
    unknown = sorted(set(defaults) - set(SCHEMA))
    assert not unknown, f"{notebook.name} has parameters the schema does not know: {unknown}"
    assert check_parameters(defaults, where=notebook.stem).keys() == defaults.keys()
    for name in ("MODEL", "DEVICE", "FAST"):
        assert name in defaults, f"{notebook.name}'s parameters cell lacks {name}"
    assert {"SEED", "SEEDS"} & defaults.keys(), f"{notebook.name}'s parameters cell names no seed (SEEDS or SEED)"


def test_one_name_per_meaning():
    """The names that differed between chapters are gone: steps are STEPS, held-out positions N_EVAL_TOKENS."""
    for old in ("TRAIN_STEPS", "N_STEPS", "N_TEST_TOKENS", "N_TRAIN_TOKENS", "N_HELDOUT_TOKENS"):
        assert old not in SCHEMA
    for notebook in CHAPTERS:
        assert not {"TRAIN_STEPS", "N_STEPS", "N_TEST_TOKENS"} & set(notebook_defaults(ROOT / notebook))


def test_schema_defaults_have_their_kinds():
    assert check_parameters({p.name: p.default for p in SCHEMA.values()}).keys() == SCHEMA.keys()
    assert all(meaning for _, _, meaning, _ in schema_rows())


def test_unknown_parameter_names_it_and_the_valid_ones():
    with pytest.raises(ParameterError, match=r"03_x: unknown parameter 'N_STEP'\. Did you mean STEPS\? "
                                             r"Parameters are: MODEL, DATASET, .*STEPS") as err:
        check_parameters({"MODEL": "embedded:clean", "N_STEP": 5}, where="03_x")
    assert "LAMBDA_WARMUP" in str(err.value)
    with pytest.raises(ParameterError, match=r"unknown parameter 'QQQ'\. Parameters are"):
        check_parameters({"QQQ": 1})


@pytest.mark.parametrize("name, value, says", [
    ("LR", "1e-3", r"LR must be a number .*got '1e-3' \(str\).*YAML 1\.1.*write 0\.001"),
    ("STEPS", 2.5, r"STEPS must be an int .*got 2\.5 \(float\); e\.g\. STEPS = 600"),
    ("SEED", True, r"SEED must be an int"),
    ("FAST", "yes", r"FAST must be True or False"),
    ("LAMBDAS", [0, "10"], r"LAMBDAS must be a list of numbers"),
    ("PENALISED_LAMBDA", "large", r"PENALISED_LAMBDA must be \"auto\" or a number"),
    ("MODEL", 3, r"MODEL must be a string"),
    ("N_TOKENS", "4000", r"N_TOKENS must be an int .*\(write it without quotes\)"),
])
def test_mistyped_parameter_names_it_and_its_kind(name, value, says):
    with pytest.raises(ParameterError, match=says):
        check_parameters({name: value}, where="01_crosscoders")


def test_values_of_the_right_kind_pass_and_ints_become_floats():
    out = check_parameters({"LR": 1, "LAMBDA": 100, "PENALISED_LAMBDA": 30, "LAMBDAS": [0, 0.5], "FAST": True})
    assert out == {"LR": 1.0, "LAMBDA": 100.0, "PENALISED_LAMBDA": 30, "LAMBDAS": [0, 0.5], "FAST": True}
    assert type(out["LR"]) is float and type(out["LAMBDA"]) is float
    assert check_parameters({"PENALISED_LAMBDA": "auto"}) == {"PENALISED_LAMBDA": "auto"}


def test_seeds_first_block_and_solutions():
    assert check_parameters({"SEEDS": [0, 1, 2], "FIRST_BLOCK": 12, "SOLUTIONS": False}) == \
        {"SEEDS": [0, 1, 2], "FIRST_BLOCK": 12, "SOLUTIONS": False}
    with pytest.raises(ParameterError, match=r"SEEDS must be a list of ints .*got \[0, 1\.5\]"):
        check_parameters({"SEEDS": [0, 1.5]})
    with pytest.raises(ParameterError, match=r"SEEDS must be a list of ints"):
        check_parameters({"SEEDS": [True]})
    with pytest.raises(ParameterError, match=r"SOLUTIONS must be True or False"):
        check_parameters({"SOLUTIONS": "no"})


@pytest.mark.parametrize("notebook", CHAPTERS, ids=page_id)
def test_every_chapter_has_the_solutions_switch_and_1_to_5_a_window(notebook):
    defaults = notebook_defaults(ROOT / notebook)
    assert defaults["SOLUTIONS"] is True, f"{notebook.name}: the parameters cell must set SOLUTIONS = True"
    if notebook.stem[:2] in ("01", "02", "03", "04", "05"):
        assert defaults["FIRST_BLOCK"] == 0, f"{notebook.name}: the parameters cell must set FIRST_BLOCK = 0"
