import torch

from crosscoder_lib import check_interaction_matrix


def interaction_matrix_by_hand(idx_BK: torch.Tensor, val_BK: torch.Tensor, G_LHN: torch.Tensor,
                               w_LN: torch.Tensor) -> torch.Tensor:
    """The pairwise interaction matrix, accumulated over every block, token and neuron.

    At each (block l, token t, neuron n) the dominant slot is i = argmax_k |p[l,t,n,k]| (first on
    ties), with p[l,t,n,k] = val[t,k] · G_l[idx[t,k], n]. Every other ACTIVE slot j adds

        w[l, n] · |p[l, t, n, j]|    to    M[idx[t, i], idx[t, j]]

    (w[l, n] = ‖W_out[l][n]‖). Many neurons share a dominant feature, so their values must ADD UP
    in one entry. Finally M is divided by the number of tokens B (an average over tokens, summed
    over blocks). idx_BK, val_BK: [B, K] (padded slots have val 0); G_LHN: [L, H, N]; w_LN: [L, N].
    Returns M_HH: [H, H], row = dominant feature, column = the other one.

    Hint: M.index_put_((rows, cols), values, accumulate=True) sums repeated (row, col) pairs; an
    indexed M[rows, cols] += values does not (it keeps one of them).
    """
    if not SOLUTIONS:
        raise NotImplementedError("Exercise 4.1: write the accumulated interaction matrix (see the docstring "
                                  "above); then run this cell: its last line checks your function")
    L, H, N = G_LHN.shape
    B, K = idx_BK.shape
    abs_p_LBKN = (val_BK[None, :, :, None] * G_LHN[:, idx_BK]).abs()
    dom_LBN = abs_p_LBKN.argmax(2)
    i_LBN = idx_BK[None, :, :].expand(L, B, K).gather(2, dom_LBN)
    M_HH = torch.zeros(H, H, dtype=G_LHN.dtype)
    for j in range(K):  # the partner slot
        partner_LBN = (dom_LBN != j) & (val_BK[None, :, j, None] != 0)
        j_LBN = idx_BK[None, :, j, None].expand(L, B, N)
        value_LBN = w_LN[:, None, :] * abs_p_LBKN[:, :, j, :]
        M_HH.index_put_((i_LBN[partner_LBN], j_LBN[partner_LBN]), value_LBN[partner_LBN], accumulate=True)
    return M_HH / B


check_interaction_matrix(interaction_matrix_by_hand)
