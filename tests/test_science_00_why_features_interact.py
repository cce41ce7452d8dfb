"""Chapter 0's findings, on the committed full run (book/results/00_why_features_interact.json): the
one-neuron bound is sound on every sample of every draw and loose by a factor the seeds agree on, its
constant is the paper's Lip(GELU), and a gate makes features interact where a straight activation does not.
Nothing is trained in this chapter: the seeds are independent random draws of the samples."""

from science import assert_above, committed, metric

PAPER_LIP_GELU = 1.13  # the paper's constant, quoted to two decimals


def test_the_bound_holds_on_every_sample_of_every_draw():
    results = committed("00_why_features_interact")
    sound = metric(results, "bound_sound_fraction")
    assert sound["n"] >= 3 and sound["values"] == [1.0] * sound["n"], sound


def test_the_bound_overestimates_the_error():
    results = committed("00_why_features_interact")
    assert_above(results, "bound_tightness", 1.0, half_widths=3)


def test_the_bound_uses_the_papers_lipschitz_constant_never_below_the_grids():
    results = committed("00_why_features_interact")
    lip, lip_bound = metric(results, "lipschitz_gelu"), metric(results, "lipschitz_gelu_bound")
    assert abs(lip_bound - PAPER_LIP_GELU) < 0.005
    assert lip_bound >= lip > 1.0  # the grid's maximum can only be at or below the true supremum


def test_a_gate_makes_features_interact_without_a_curve():
    results = committed("00_why_features_interact")
    na = metric(results, "non_additivity")
    assert na["ungated_identity"] < 1e-5 < na["ungated_gelu"]
    assert na["gated_identity"] > na["ungated_gelu"] and na["gated_silu"] > na["ungated_gelu"]
