"""Chapter 2's findings, on the committed full runs of both worlds (book/results/02_compact_proofs*.json).

What is asserted is what a regression of the bounds would break, not the runs' exact values: every form of
the MLP interaction bound holds on every evaluated token of every seed (a theorem), the forms are ordered
pointwise (mid ≤ box ≤ lip), the layer-wise bound is sound and vacuous, and the QK split is exact. How loose
each form is depends on the crosscoder; only the separation of the tightest from the loosest form is a
finding (a lip form computed as the mid one would erase it)."""

import math

import pytest
from science import assert_above, assert_below, assert_between, committed, metric

WORLDS = ["embedded", "smollm2"]
FORMS = ("mid", "box", "lip", "mid_l2", "box_l2", "lip_l2")


@pytest.fixture(params=WORLDS)
def results(request):
    return committed("02_compact_proofs", request.param)


def test_the_full_run_is_of_the_world_and_kind_it_claims(results):
    gated = results["_where"].endswith("(smollm2)")
    assert metric(results, "mlp_kind") == ("gated" if gated else "standard")
    assert len(results["params"]["SEEDS"]) >= 3


@pytest.mark.parametrize("form", FORMS)
def test_every_form_of_the_mlp_bound_holds_on_every_token_of_every_seed(results, form):
    assert_between(results, f"mlp_sound_{form}", 1.0, 1.0)


def test_the_forms_are_ordered_on_every_token(results):
    """mid ≤ box (box is a supremum over a set holding the actual pre-activations) and box ≤ lip (lip
    bounds every point of that set), on every (block, token) pair of every seed."""
    assert_between(results, "mlp_mid_le_box", 1.0, 1.0)
    assert_between(results, "mlp_box_le_lip", 1.0, 1.0)
    assert all(f == 1.0 for f in metric(results, "mlp_bound_sound_fraction_per_block"))


def test_the_closed_interaction_term_is_looser_than_the_evaluated_error(results):
    """The lip form (Lip(σ) times the off-dominant sums) pays for the worst slope and for aligned errors:
    its median bound/actual is above the mid form's by more than the seeds' spread."""
    assert_above(results, "mlp_tightness_lip", "mlp_tightness_mid", half_widths=3)
    assert_above(results, "mlp_tightness_mid", 1.0, half_widths=3)


def test_the_layerwise_bound_is_sound_and_vacuous(results):
    assert_between(results, "layerwise_sound_fraction", 1.0, 1.0)
    assert_above(results, "layerwise_loss_upper", metric(results, "log_vocab"), half_widths=3)
    assert metric(results, "layerwise_vacuous") is True


def test_the_qk_split_is_exact_to_float_precision(results):
    """The four parts sum to the scores of n̂1 up to float32 round-off of the decoded n̂1 (a dropped or
    wrongly rotated part would leave an error of order 1)."""
    assert_between(results, "qk_split_max_rel_error", 0.0, 1e-5)


def test_the_invariants_hold_at_round_off(results):
    assert metric(results, "mlp_invariant_rel_error") < 1e-4
    assert metric(results, "p_sum_invariant_rel_error") < 1e-6
    assert metric(results, "decomposition_rel_error") < 1e-4


def test_at_the_papers_size_the_proof_is_shorter_after_finitely_many_inputs(results):
    crossover = metric(results, "flops_crossover_paper_size")
    assert math.isfinite(crossover) and crossover > 1
    assert metric(results, "flops_forward_counted") == metric(results, "flops_forward_formula")
    assert_below(results, metric(results, "flops_paper_proof_per_input"), metric(results, "flops_paper_brute_per_input"))
