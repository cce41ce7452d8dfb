import torch

from crosscoder_lib import check_threshold_estimate


def threshold_estimate(pre_batches: list[torch.Tensor], k: int, beta: float) -> float:
    """The inference threshold BatchTopK estimates while it trains on these batches, in order.

    For each batch, m = the smallest POSITIVE value the batch selection keeps (Exercise 1.2); a
    batch that keeps no positive value is skipped. The n-th update (n = 0, 1, …) is

        b_n = min(β, n / (n + 1));   threshold ← b_n · threshold + (1 − b_n) · m

    a plain running mean for the first 1/(1 − β) updates, a moving average with factor β after.
    pre_batches: a list of [B, H] pre-activations; k: features per token on average; beta: β.
    Returns the threshold as a Python float (0 if no batch kept a positive value).

    Hint: the k·B largest values of ReLU(pre) are flat.topk(k·B).values; keep those > 0.
    """
    if not SOLUTIONS:
        raise NotImplementedError("Exercise 1.3: write BatchTopK's threshold estimate (see the docstring "
                                  "above); then run this cell: its last line checks your function")
    threshold, n = 0.0, 0
    for pre_BH in pre_batches:
        flat = pre_BH.relu().flatten()
        kept = flat.topk(min(k * pre_BH.shape[0], flat.numel())).values
        positive = kept[kept > 0]
        if positive.numel() == 0:
            continue
        b = min(beta, n / (n + 1))
        threshold = b * threshold + (1 - b) * positive.min().item()
        n += 1
    return threshold


check_threshold_estimate(threshold_estimate)
