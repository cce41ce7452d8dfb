import torch

from crosscoder_lib import check_contributions


def contributions_by_hand(idx_TK: torch.Tensor, val_TK: torch.Tensor, W_dec_HD: torch.Tensor,
                          W_in_DN: torch.Tensor) -> torch.Tensor:
    """The per-feature pre-activation contributions of one block, over each token's active features.

        G[v, n] = (W_dec[v] @ W_in)[n]          (once per feature: its pre-activation per unit)
        p[t, n, k] = val[t, k] · G[idx[t, k], n]

    so that Σ_k p[t, n, k] + β[n] is the MLP's pre-activation on the reconstruction.
    idx_TK, val_TK: [T, K] feature ids and activations (a padded slot has val 0); W_dec_HD: [H, D]
    the decoder rows at the block's MLP input; W_in_DN: [D, N]. Returns p_TNK: [T, N, K],
    differentiable in val_TK and W_dec_HD.

    Hint: G_HN[idx_TK] is [T, K, N]; mind the order of the last two axes.
    """
    if not SOLUTIONS:
        raise NotImplementedError("Exercise 2.1: write the per-feature contributions p (see the docstring "
                                  "above); then run this cell: its last line checks your function")
    G_HN = W_dec_HD @ W_in_DN
    return (val_TK[:, :, None] * G_HN[idx_TK]).transpose(1, 2)


check_contributions(contributions_by_hand)
