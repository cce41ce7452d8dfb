import torch

from crosscoder_lib import check_dominant_share


def dominant_share_by_hand(idx_BK: torch.Tensor, val_BK: torch.Tensor, G_LHN: torch.Tensor) -> torch.Tensor:
    """The dominant share of a batch: how much of each neuron's input its dominant feature carries.

        p[l, t, n, k] = val[t, k] · G_l[idx[t, k], n]
        share = mean over (l, t, n) of  max_k |p[l, t, n, k]| / Σ_k |p[l, t, n, k]|

    where a neuron that no feature reaches (Σ_k |p| = 0, e.g. a token with no active feature) counts
    as 1: with nothing to mix, the feature-wise explanation is exact there.
    idx_BK, val_BK: [B, K] (padded slots have val 0); G_LHN: [L, H, N]. Returns a scalar tensor.

    Hint: the same gathered |p| as in Exercise 3.1; torch.where keeps the 0/0 out of the mean.
    """
    if not SOLUTIONS:
        raise NotImplementedError("Exercise 3.2: write the dominant share (see the docstring above); then run "
                                  "this cell: its last line checks your function")
    abs_p_LBKN = (val_BK[None, :, :, None] * G_LHN[:, idx_BK]).abs()
    total_LBN, top_LBN = abs_p_LBKN.sum(2), abs_p_LBKN.amax(2)
    share_LBN = torch.where(total_LBN > 0, top_LBN / total_LBN, torch.ones_like(total_LBN))
    return share_LBN.mean()


check_dominant_share(dominant_share_by_hand)
