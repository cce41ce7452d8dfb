import torch

from crosscoder_lib import check_batchtopk


def batchtopk_by_hand(pre_BH: torch.Tensor, k: int) -> torch.Tensor:
    """BatchTopK as it trains: keep the k·B largest positive pre-activations of the whole batch.

        a = ReLU(pre) where ReLU(pre) is among the k·B largest values of ReLU(pre) over all (b, h),
        a = 0 elsewhere

    So each token keeps k features on average, a busy token more and a quiet one fewer.
    pre_BH: [B, H]; k: features per token on average. Returns a_BH: [B, H], dense, differentiable
    in pre_BH (training backpropagates through the kept values).

    Hint: flatten ReLU(pre), take its topk(k·B), scatter the kept values back into zeros.
    """
    if not SOLUTIONS:
        raise NotImplementedError("Exercise 1.2: write BatchTopK (see the docstring above); then run this cell: "
                                  "its last line checks your function")
    flat = pre_BH.relu().flatten()
    kept_vals, kept_idx = flat.topk(min(k * pre_BH.shape[0], flat.numel()))
    return torch.zeros_like(flat).scatter(0, kept_idx, kept_vals).view_as(pre_BH)


check_batchtopk(batchtopk_by_hand)
