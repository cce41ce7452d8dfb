"""Science checks on chapter 0's FAST run: GELU's Lipschitz constant and the one-neuron bound."""


def test_gelu_lipschitz_and_bound(chapter_results):
    m = chapter_results("00_why_features_interact")["metrics"]
    # Lip(gelu_new) = 1.1289...; the grid may miss the maximum by a little, never by 1 %.
    assert 1.118 < m["lipschitz_gelu"] < 1.131
    assert m["bound_sound_fraction"] == 1.0
    assert m["bound_tightness"] > 1.0
