import torch

from crosscoder_lib import check_penalty


def interaction_penalty_by_hand(idx_BK: torch.Tensor, val_BK: torch.Tensor, G_LHN: torch.Tensor) -> torch.Tensor:
    """The interaction penalty L_int of a batch, over each token's active features only.

        p[l, t, n, k] = val[t, k] · G_l[idx[t, k], n]
        L_int = mean over (l, t, n) of ( Σ_k |p[l, t, n, k]| − max_k |p[l, t, n, k]| )

    idx_BK, val_BK: [B, K] the ids and activations of each token's active features (a padded slot
    has val 0, so it adds nothing); G_LHN: [L, H, N], G_l = W_dec[:, slot(l)] @ W_in_l.
    Returns a scalar tensor, differentiable in val_BK and G_LHN (it is a training loss).

    Hint: G_LHN[:, idx_BK] gathers each token's rows, [L, B, K, N]; reduce over the K axis. Use
    amax, not max(dim): at a tie it splits the gradient between the tied features.
    """
    if not SOLUTIONS:
        raise NotImplementedError("Exercise 3.1: write the penalty over active features (see the docstring "
                                  "above); then run this cell: its last line checks your function")
    abs_p_LBKN = (val_BK[None, :, :, None] * G_LHN[:, idx_BK]).abs()
    return (abs_p_LBKN.sum(2) - abs_p_LBKN.amax(2)).mean()


check_penalty(interaction_penalty_by_hand)
