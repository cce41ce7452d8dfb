import torch

from crosscoder_lib import check_batchtopk_inference


def encode_at_inference(pre_BH: torch.Tensor, threshold: float) -> torch.Tensor:
    """BatchTopK at inference: each token keeps its pre-activations above the estimated threshold.

        a[b, h] = pre[b, h]  if pre[b, h] > max(threshold, 0),   else 0

    No token looks at another, so a token's code no longer depends on its batch.
    pre_BH: [B, H]; threshold: the estimate of Exercise 1.3. Returns a_BH: [B, H].

    Hint: a strict comparison; the clamp keeps negative values out even if the estimate is negative.
    """
    if not SOLUTIONS:
        raise NotImplementedError("Exercise 1.4: write BatchTopK's inference rule (see the docstring above); "
                                  "then run this cell: its last line checks your function")
    return pre_BH * (pre_BH > max(threshold, 0.0))


check_batchtopk_inference(encode_at_inference)
