"""The science checks' own machinery (tests/science.py): it reads committed full runs, asserts findings with
margins from the seed intervals, and a science test run against a deliberately broken copy of its results
file fails, naming the finding."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from science import assert_above, assert_below, assert_between, committed, measured, reproduces

from crosscoder_lib.book import results
from crosscoder_lib.book.chapter import start_chapter
from crosscoder_lib.book.seeds import summarize_seeds

CH3 = "03_interaction_penalty"
SCIENCE_TEST = '''
from science import assert_above, assert_between, committed


def test_the_penalty_concentrates_the_mlp_on_one_feature():
    r = committed("03_interaction_penalty")
    assert_above(r, "share_at_1000", "share_at_0", half_widths=3)
    assert_between(r, "share_at_0", 0.0, 1.0)
'''


@pytest.fixture
def good(tmp_path, monkeypatch):
    """A results folder holding one full run of chapter 3 whose shares were measured over 3 seeds."""
    folder = tmp_path / "good"
    monkeypatch.setenv(results.RESULTS_ENV, str(folder))
    run = start_chapter(CH3, {"MODEL": "embedded:clean", "DEVICE": "cpu", "FAST": False, "SEEDS": [0, 1, 2]})
    run.record_seeds("share_at_0", dict(zip(run.seeds, [0.30, 0.32, 0.31])))
    run.record_seeds("share_at_1000", dict(zip(run.seeds, [0.80, 0.83, 0.82])))
    run.finish({"fvu": 0.04, "steps": 600})
    monkeypatch.delenv(results.RESULTS_ENV)
    return folder


def _broken(good, tmp_path, **metrics):
    """A copy of ``good`` with some metrics replaced."""
    data = json.loads((good / f"{CH3}.json").read_text())
    data["metrics"].update(metrics)
    folder = tmp_path / "broken"
    folder.mkdir(exist_ok=True)
    (folder / f"{CH3}.json").write_text(json.dumps(data))
    return folder


def _pytest(test_file, folder):
    env = {**os.environ, "CROSSCODER_SCIENCE_RESULTS": str(folder)}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                           "--rootdir", str(test_file.parent), str(test_file)], capture_output=True, text=True, env=env,
                          cwd=str(test_file.parent))


def test_a_science_test_fails_on_a_broken_copy_of_its_results(good, tmp_path):
    test_file = tmp_path / "test_science_of_03.py"
    test_file.write_text(SCIENCE_TEST)
    tests = str(Path(__file__).parent)  # where science.py is
    (tmp_path / "conftest.py").write_text(f"import sys\nsys.path.insert(0, {tests!r})\n")
    passed = _pytest(test_file, good)
    assert passed.returncode == 0, passed.stdout[-2000:]
    broken = _broken(good, tmp_path, share_at_1000=summarize_seeds([0.31, 0.36, 0.33])._asdict())
    failed = _pytest(test_file, broken)
    assert failed.returncode == 1, failed.stdout[-2000:]
    assert "share_at_1000 = 0.3333 ± 0.063 (n=3) is not above share_at_0 = 0.31 ± 0.025 (n=3) by 3 half-widths" \
        in failed.stdout, failed.stdout[-2000:]


def test_margins_come_from_the_seed_intervals(good, monkeypatch):
    monkeypatch.setenv("CROSSCODER_SCIENCE_RESULTS", str(good))
    r = committed(CH3)
    hw0, hw1 = measured(r, "share_at_0").half_width, measured(r, "share_at_1000").half_width
    gap = measured(r, "share_at_1000").mean - measured(r, "share_at_0").mean
    k = gap / (hw0 ** 2 + hw1 ** 2) ** 0.5  # the number of half-widths the gap is worth
    assert_above(r, "share_at_1000", "share_at_0", half_widths=0.99 * k)
    with pytest.raises(AssertionError, match="by .* half-widths"):
        assert_above(r, "share_at_1000", "share_at_0", half_widths=1.01 * k)
    assert_below(r, "share_at_0", 0.5, half_widths=3) and assert_above(r, "share_at_1000", 0.5)
    assert_between(r, "share_at_1000", 0.7, 0.9)
    with pytest.raises(AssertionError, match=r"share_at_1000 = 0\.8167 .* is not inside \[0\.85, 1\]"):
        assert_between(r, "share_at_1000", 0.85, 1.0)


def test_a_number_without_an_interval_has_no_margin(good, tmp_path, monkeypatch):
    monkeypatch.setenv("CROSSCODER_SCIENCE_RESULTS", str(good))
    with pytest.raises(AssertionError, match=r"fvu = 0\.04 is one number, not measured over seeds.*record_seeds"):
        assert_above(committed(CH3), "fvu", 0.0)
    with pytest.raises(AssertionError, match=r"no metric 'share_at_30'; metrics are \['fvu', 'share_at_0'"):
        assert_above(committed(CH3), "share_at_30", 0.0)
    one_seed = _broken(good, tmp_path, share_at_0=summarize_seeds([0.3])._asdict())
    monkeypatch.setenv("CROSSCODER_SCIENCE_RESULTS", str(one_seed))
    with pytest.raises(AssertionError, match=r"share_at_0 has 1 seed\(s\); a margin needs an interval from >= 3"):
        assert_above(committed(CH3), "share_at_1000", "share_at_0")


def test_committed_reads_full_runs_only(good, tmp_path, monkeypatch):
    assert committed("01_crosscoders")["chapter"] == "01_crosscoders"  # the repository's own file
    with pytest.raises(AssertionError, match=r"no committed results for 06_full_scale in world 'smollm2' "
                                             r"\(06_full_scale\.smollm2\.json\)"):
        committed("06_full_scale", "smollm2")  # chapter 6 has no SmolLM2 page
    data = json.loads((good / f"{CH3}.json").read_text())
    (tmp_path / f"{CH3}.json").write_text(json.dumps(dict(data, fast=True)))
    monkeypatch.setenv("CROSSCODER_SCIENCE_RESULTS", str(tmp_path))
    with pytest.raises(AssertionError, match="comes from a FAST run"):
        committed(CH3)


def test_reproduces_compares_within_the_intervals(good):
    recorded = json.loads((good / f"{CH3}.json").read_text())
    fresh = json.loads(json.dumps(recorded))
    assert reproduces(fresh, recorded) == []
    fresh["metrics"]["share_at_0"] = summarize_seeds([0.31, 0.33, 0.32])._asdict()  # 0.01 off: inside 3 half-widths
    fresh["metrics"]["fvu"] = 0.04 * (1 + 1e-9)  # float round-off
    assert reproduces(fresh, recorded) == []
    fresh["metrics"]["share_at_1000"] = summarize_seeds([0.60, 0.61, 0.62])._asdict()
    fresh["metrics"]["fvu"], fresh["metrics"]["steps"] = 0.041, 601
    assert [p.split(":")[0] for p in reproduces(fresh, recorded)] == ["fvu", "share_at_1000", "steps"]
