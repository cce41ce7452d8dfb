import torch

from crosscoder_lib import check_token_scores


def token_scores_by_hand(idx_BK: torch.Tensor, val_BK: torch.Tensor, G_LHN: torch.Tensor,
                         w_LN: torch.Tensor) -> torch.Tensor:
    """The per-token interaction score of the paper's Figure 4.

        p[l, t, n, k] = val[t, k] · G_l[idx[t, k], n]
        T(t) = Σ_l Σ_n w[l, n] · ( Σ_k |p[l, t, n, k]| − max_k |p[l, t, n, k]| )

    with w[l, n] = ‖W_out[l][n]‖: how much the MLP neurons at token t mix features other than their
    dominant one, in residual-stream units. idx_BK, val_BK: [B, K] (padded slots have val 0);
    G_LHN: [L, H, N]; w_LN: [L, N]. Returns T_B: [B].
    """
    if not SOLUTIONS:
        raise NotImplementedError("Exercise 5.1: write the per-token interaction score (see the docstring "
                                  "above); then run this cell: its last line checks your function")
    abs_p_LBKN = (val_BK[None, :, :, None] * G_LHN[:, idx_BK]).abs()
    off_dominant_LBN = abs_p_LBKN.sum(2) - abs_p_LBKN.amax(2)
    return (off_dominant_LBN * w_LN[:, None, :]).sum((0, 2))


check_token_scores(token_scores_by_hand)
