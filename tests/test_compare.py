"""Both worlds and the paper side by side (crosscoder_lib.book.compare): rows matched by result, the running
page's own rows in its world's column, a missing or FAST world named under the table."""

from __future__ import annotations

from crosscoder_lib.book import results
from crosscoder_lib.book.chapter import start_chapter
from crosscoder_lib.book.compare import MISSING, world_comparison
from crosscoder_lib.book.seeds import summarize_seeds

CH = "03_interaction_penalty"
TOY = [{"result": "Fig. 1: dominant share at λ=0", "paper": "0.305", "ours": 0.282},
       {"result": "Fig. 2: keep_largest Φ", "paper": "0.10", "ours": 0.733}]


def _record(folder, model, rows, fast=False):
    return results.record(CH, {}, params={"MODEL": model}, device="cpu", run_seconds=1, fast=fast, reproduction=rows)


def test_the_toy_and_the_real_world_side_by_side(tmp_path, monkeypatch):
    monkeypatch.setenv(results.RESULTS_ENV, str(tmp_path))
    _record(tmp_path, "embedded:clean", TOY)
    share = summarize_seeds([0.41, 0.44, 0.40])
    real = [{"result": "Fig. 1: dominant share at λ=0", "paper": "0.305", "ours": share},
            {"result": "only on the real model", "paper": "–", "ours": 3}]
    c = world_comparison(CH, ("smollm2", real))
    assert c.header == ["Result", "Paper", "toy (embedded)", "SmolLM2-135M"]
    assert c.rows == [["Fig. 1: dominant share at λ=0", "0.305", "0.282", "0.417 ± 0.052 (n=3)"],
                      ["Fig. 2: keep_largest Φ", "0.10", "0.733", MISSING],
                      ["only on the real model", "–", MISSING, "3"]]
    assert c.values["smollm2"]["Fig. 1: dominant share at λ=0"] is share and c.notes == []
    assert c.markdown().startswith("| Result | Paper | toy (embedded) | SmolLM2-135M |\n|---|---|---|---|\n")


def test_a_missing_or_fast_world_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv(results.RESULTS_ENV, str(tmp_path))
    c = world_comparison(CH, ("embedded", TOY))
    assert [r[-1] for r in c.rows] == [MISSING, MISSING]
    assert c.notes == [f"SmolLM2-135M: no results yet ($CROSSCODER_RESULTS_DIR/{CH}.smollm2.json); run "
                       f"book/chapters/smollm2/{CH}.ipynb"]
    _record(tmp_path, "smollm2-135m", TOY[:1], fast=True)
    c = world_comparison(CH, ("embedded", TOY), current_fast=True)
    assert c.rows[0][-1] == "0.282" and len(c.notes) == 2 and all("FAST" in n for n in c.notes)
    assert "- SmolLM2-135M: a FAST smoke run" in c.markdown()


def test_a_chapter_run_shows_its_worlds(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(results.RESULTS_ENV, str(tmp_path))
    _record(tmp_path, "embedded:clean", TOY)
    run = start_chapter(CH, {"MODEL": "smollm2-135m", "DEVICE": "cpu", "FAST": False}, world="smollm2")
    shown = run.show_worlds([dict(TOY[0], ours=0.5)])
    assert shown.rows[0][2:] == ["0.282", "0.5"] and shown.rows[1][2:] == ["0.733", MISSING]
    run.finish({}, reproduction=[dict(TOY[0], ours=0.5)])
    assert world_comparison(CH).rows[0][2:] == ["0.282", "0.5"]  # from the files alone, once both are written
