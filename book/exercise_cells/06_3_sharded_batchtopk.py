import torch

from crosscoder_lib import check_sharded_batchtopk


def sharded_batchtopk(pre_shards: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """BatchTopK over a global batch that W data-parallel processes hold in shards.

    The global batch has B = Σ_r B_r tokens, so BatchTopK keeps the k·B largest values of ReLU(pre)
    over ALL shards. Each rank r sends the k·B largest values of its own shard (the global top k·B
    are surely among their union), every rank computes the same threshold τ = the k·B-th largest
    value of that union, and keeps its own values ≥ τ:

        a_r = ReLU(pre_r) · [ReLU(pre_r) ≥ τ]

    pre_shards: W tensors [B_r, H], one per rank (here all in one process). Returns the W dense
    a_r: [B_r, H], which together must equal BatchTopK on the concatenated batch.
    """
    if not SOLUTIONS:
        raise NotImplementedError("Exercise 6.3: write BatchTopK across processes (see the docstring above); then "
                                  "run this cell: its last line checks your function")
    n_keep = k * sum(pre.shape[0] for pre in pre_shards)
    sent = [pre.relu().flatten().topk(min(n_keep, pre.numel())).values for pre in pre_shards]
    union = torch.cat(sent)
    tau = union.topk(min(n_keep, union.numel())).values.min()
    return [pre.relu() * (pre.relu() >= tau) for pre in pre_shards]


check_sharded_batchtopk(sharded_batchtopk)
