import torch

from crosscoder_lib import check_coactivation


def coactivation_by_hand(idx_BK: torch.Tensor, val_BK: torch.Tensor, n_features: int) -> torch.Tensor:
    """The co-activation baseline: the cosine between two features' firing patterns over the tokens.

        fired[t, h] = 1 if feature h is active at token t (a slot with val ≠ 0), else 0
        C[i, j] = Σ_t fired[t, i] fired[t, j] / √(Σ_t fired[t, i] · Σ_t fired[t, j])

    and C[i, j] = 0 when i or j never fires. idx_BK, val_BK: [B, K] (a padded slot has val 0 and its
    id means nothing); n_features: H. Returns C_HH: [H, H] in float64.

    Hint: build fired as a [B, H] float64 tensor with index_put_ (mask the padded slots), then
    fired.T @ fired counts every pair.
    """
    if not SOLUTIONS:
        raise NotImplementedError("Exercise 4.2: write the co-activation matrix (see the docstring above); then "
                                  "run this cell: its last line checks your function")
    B, K = idx_BK.shape
    active_BK = val_BK != 0
    rows_BK = torch.arange(B)[:, None].expand(B, K)
    fired_BH = torch.zeros(B, n_features, dtype=torch.float64)
    fired_BH.index_put_((rows_BK[active_BK], idx_BK[active_BK]), torch.ones(int(active_BK.sum()), dtype=torch.float64))
    count_HH = fired_BH.T @ fired_BH
    norm_H = count_HH.diagonal().sqrt()
    denom_HH = norm_H[:, None] * norm_H[None, :]
    return torch.where(denom_HH > 0, count_HH / denom_HH.clamp_min(1e-300), torch.zeros_like(count_HH))


check_coactivation(coactivation_by_hand)
