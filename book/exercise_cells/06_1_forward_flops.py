from crosscoder_lib import check_forward_flops


def forward_flops_by_hand(n_blocks: int, d_model: int, d_mlp: int, n_heads: int, d_head: int, vocab: int,
                          seq: int) -> int:
    """The matrix-multiply FLOPs of one forward pass of a transformer over seq tokens.

    2 FLOPs per multiply-add. Per token and block: the Q, K, V and O projections (D × A·E each) and
    the MLP's W_in and W_out (D × N each); per token: the unembedding (D × V); per block and head:
    the scores q·k and the mixing of the values, S × S × E each (the full square: PyTorch computes
    it before the causal mask). LayerNorms, softmax and activations are lower-order and not counted.
    Returns an int.
    """
    if not SOLUTIONS:
        raise NotImplementedError("Exercise 6.1: write the FLOP count of a forward pass (see the docstring "
                                  "above); then run this cell: its last line checks your function")
    D, N, A, E, V, S = d_model, d_mlp, n_heads, d_head, vocab, seq
    per_token = n_blocks * (2 * 4 * D * A * E + 2 * 2 * D * N) + 2 * D * V
    attention = n_blocks * 2 * 2 * A * S * S * E
    return S * per_token + attention


check_forward_flops(forward_flops_by_hand)
