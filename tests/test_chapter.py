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


def test_fast_applies_the_fast_values_of_the_run_s_world(tmp_path, monkeypatch):
    monkeypatch.setenv(results.RESULTS_ENV, str(tmp_path))
    ns = _namespace(FAST=True, MODEL="smollm2-135m", DATASET="smollm2-stories")
    run = start_chapter(CH3, ns, world="smollm2")
    assert run.world == "smollm2" and fast_overrides(CH3, "smollm2") != fast_overrides(CH3)
    for name, value in fast_overrides(CH3, "smollm2").items():
        assert ns[name] == value and run.params[name] == value, name


def test_a_world_page_refuses_another_world_s_model(tmp_path, monkeypatch):
    """papermill replaces a real-world page's world cell (tagged injected-parameters) with its own -p
    values; the page then holds the toy's MODEL and must not run (it would overwrite the toy's results)."""
    monkeypatch.setenv(results.RESULTS_ENV, str(tmp_path))
    with pytest.raises(ValueError, match=r"03_interaction_penalty: this is the smollm2 world's page, but MODEL = "
                                         r"'embedded:clean' belongs to the embedded world\. papermill replaces .*"
                                         r"presets 03 smollm2 > p\.yaml"):
        start_chapter(CH3, _namespace(), world="smollm2")
    assert not list(tmp_path.iterdir())


def test_seeds_are_recorded_with_their_interval_and_written_by_finish(tmp_path, monkeypatch):
    monkeypatch.setenv(results.RESULTS_ENV, str(tmp_path))
    run = start_chapter(CH3, _namespace(SEEDS=[0, 1, 2]))
    assert run.seeds == [0, 1, 2] and start_chapter(CH3, _namespace(SEED=7)).seeds == [7]
    share = run.record_seeds("share", {s: v for s, v in zip(run.seeds, [0.71, 0.69, 0.74])})
    assert (share.n, share.seeds, round(share.mean, 4)) == (3, [0, 1, 2], 0.7133)
    assert format(share, ".2f") == "0.71 ± 0.06 (n=3)"
    with pytest.raises(ValueError, match="recorded over seeds twice"):
        run.record_seeds("share", {0: 1.0})
    run.glue("share", share, ".2f")
    with pytest.raises(ValueError, match=r"metrics \['share'\] are also recorded over seeds"):
        run.finish({"share": 0.7})
    run.finish({"fvu": 0.2}, reproduction=[{"result": "share", "paper": "0.82", "ours": share}])
    saved = json.loads((tmp_path / f"{CH3}.json").read_text())
    assert saved["metrics"]["share"]["values"] == [0.71, 0.69, 0.74] and saved["metrics"]["fvu"] == 0.2
    assert saved["metrics"]["share"]["half_width"] == pytest.approx(share.half_width)
    assert "| 03_interaction_penalty | embedded | share | 0.82 | 0.713 ± 0.063 (n=3) |" in \
        results.reproduction_table(tmp_path)
