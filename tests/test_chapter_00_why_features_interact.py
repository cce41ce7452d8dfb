"""Science checks on chapter 0's FAST run: GELU's and SiLU's Lipschitz constants, the one-neuron bound over
the seeds' draws, and the gated neuron's interaction without a curve."""


def test_gelu_lipschitz_and_bound(chapter_results):
    m = chapter_results("00_why_features_interact")["metrics"]
    # Lip(gelu_new) = 1.1289...; the grid may miss the maximum by a little, never by 1 %.
    assert 1.118 < m["lipschitz_gelu"] < 1.131
    # the bound's constant is the true sup, refined and rounded up: never below the grid's
    assert 1.12899 < m["lipschitz_gelu_bound"] < 1.12902 and m["lipschitz_gelu_bound"] >= m["lipschitz_gelu"]
    # Lip(SiLU) = 1.0998...
    assert 1.089 < m["lipschitz_silu"] < 1.101
    sound, tightness = m["bound_sound_fraction"], m["bound_tightness"]
    assert sound["n"] == tightness["n"] == 3 and sound["seeds"] == [0, 1, 2]
    assert sound["values"] == [1.0, 1.0, 1.0]
    assert all(t > 1.0 for t in tightness["values"])
    assert len(set(tightness["values"])) == 3  # three different draws, not one draw three times


def test_a_gate_makes_features_interact_without_a_curve(chapter_results):
    m = chapter_results("00_why_features_interact")["metrics"]
    na = m["non_additivity"]
    assert na["ungated_identity"] < 1e-5  # a linear neuron is additive (float round-off only)
    assert na["ungated_gelu"] > 0.1 and na["gated_silu"] > 0.1
    assert na["gated_identity"] > na["ungated_gelu"]
    assert abs(na["gated_identity"] - m["gated_identity_cross_term"]) < 1e-4 * m["gated_identity_cross_term"]
