"""ChapterRun reads a notebook's parameters itself, checks them, applies the fast preset, and writes
the results file of the chapter's world, saying where relative to the book."""

import json
from pathlib import Path

import pytest

from crosscoder_lib.book import display, results
from crosscoder_lib.book.chapter import ChapterRun, notebook_parameters, start_chapter
from crosscoder_lib.book.parameters import ParameterError
from crosscoder_lib.book.presets import fast_overrides

CH3 = "03_interaction_penalty"


def _namespace(**params):
    """A notebook's globals after its parameters cell: IPython's own names, a module, and parameters."""
    ns = {"__name__": "__main__", "In": [""], "Out": {}, "_": None, "get_ipython": print, "json": json,
          "_i1": "MODEL = ...", "start_chapter": start_chapter}
    ns.update(dict(MODEL="embedded:clean", N_TOKENS=32_768, STEPS=600, LR=2e-3, DEVICE="cpu", SEED=0, FAST=False),
              **params)
    return ns


def test_reads_the_parameters_and_records_them_as_given(tmp_path, monkeypatch):
    monkeypatch.setenv(results.RESULTS_ENV, str(tmp_path))
    ns = _namespace()
    run = ChapterRun.from_globals(CH3, ns)
    assert run.params == dict(MODEL="embedded:clean", N_TOKENS=32_768, STEPS=600, LR=2e-3, DEVICE="cpu", SEED=0,
                              FAST=False)
    assert notebook_parameters(ns) == run.params  # nothing else in the namespace counts as a parameter
    assert run.fast is False and str(run.device) == "cpu" and run.world == "embedded"
    assert ns["N_TOKENS"] == 32_768  # not a FAST run: the notebook's values stay


def test_fast_applies_the_fast_preset_into_the_notebook(tmp_path, monkeypatch):
    monkeypatch.setenv(results.RESULTS_ENV, str(tmp_path))
    ns = _namespace(FAST=True)
    run = ChapterRun.from_globals(CH3, ns)
    fast = fast_overrides(CH3)
    assert fast["N_TOKENS"] == 2_000 and fast["LAMBDAS"] == [0, 100, 1000]
    for name, value in fast.items():
        assert ns[name] == value and run.params[name] == value, name
    assert run.fast is True and run.params["FAST"] is True
    assert ns["LR"] == 2e-3  # what the fast preset does not name keeps the notebook's value


def test_bad_parameters_are_refused_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv(results.RESULTS_ENV, str(tmp_path))
    with pytest.raises(ParameterError, match=r"03_interaction_penalty: unknown parameter 'N_STEP'\. Did you mean STEPS"):
        start_chapter(CH3, _namespace(N_STEP=5))  # e.g. papermill -p N_STEP 5
    with pytest.raises(ParameterError, match=r"parameter STEPS must be an int"):
        start_chapter(CH3, _namespace(STEPS="600"))
    ns = _namespace()
    del ns["FAST"]
    with pytest.raises(ValueError, match="must set FAST"):
        start_chapter(CH3, ns)


def test_finish_writes_the_world_s_file_and_shows_a_relative_path(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(results.RESULTS_ENV, str(tmp_path))
    for model, name in (("embedded:clean", f"{CH3}.json"), ("HuggingFaceTB/SmolLM2-135M-Instruct", f"{CH3}.smollm2.json")):
        run = start_chapter(CH3, _namespace(MODEL=model))
        run.glue("share", 0.8123, ".2f")
        with pytest.raises(ValueError, match="glued twice"):
            run.glue("share", 0.5)
        run.finish({"share": 0.8123}, reproduction=[{"result": "r", "paper": "p", "ours": 0.8123}])
        saved = json.loads((tmp_path / name).read_text())
        assert saved["world"] == run.world and saved["glued"] == {"share": 0.8123}
        assert saved["params"]["MODEL"] == model and saved["fast"] is False
        out = capsys.readouterr().out
        assert f"results written to $CROSSCODER_RESULTS_DIR/{name}" in out and str(tmp_path) not in out


def test_shown_path_is_relative_to_the_book(tmp_path, monkeypatch):
    monkeypatch.delenv(results.RESULTS_ENV, raising=False)
    root = tmp_path / "checkout"
    assert display.shown_path(root / "book" / "results" / "01_crosscoders.json", root) == "book/results/01_crosscoders.json"
    assert display.shown_path(Path("/elsewhere/deep/folder/x.json"), root) == "folder/x.json"


def test_markdown_table():
    assert display.markdown_table(["a", "b"], [[1, "x"], [2.5, None]]) == "| a | b |\n|---|---|\n| 1 | x |\n| 2.5 | None |"


def test_progress_closes_its_bar_on_break(monkeypatch):
    bars = []

    class Spy:
        def __init__(self, iterable, **kwargs):
            self.iterable, self.kwargs, self.closed = iterable, kwargs, False
            bars.append(self)

        def __iter__(self):
            return iter(self.iterable)

        def close(self):
            self.closed = True

    monkeypatch.setattr(display, "tqdm", Spy)
    for i in display.progress(range(10), "loop"):
        if i == 3:
            break
    assert len(bars) == 1 and bars[0].closed and bars[0].kwargs["desc"] == "loop"
