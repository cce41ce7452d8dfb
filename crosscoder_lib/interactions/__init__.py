"""Feature interactions inside MLPs (SPEC §3), one concept per module.

- ``activation``: the MLP activation σ and what the bounds need of it (Lip, its range on an interval);
- ``mlp``: MLP kinds and their frozen weights: standard ``σ(u W_in) W_out`` and gated
  ``(σ(u W_gate) ⊙ (u W_in)) W_out`` (SwiGLU), each for any window of the model's blocks;
- ``codes``: reading and checking a crosscoder's codes once;
- ``decoder``: the decoder rows and bias at the MLP inputs, ``G = W_dec · W_in`` and ``β``;
- ``engine``: the chunk plan and the passes over (block, chunk of tokens) every aggregate shares;
- ``quantities``: dominant share, pairwise interaction matrix, per-token scores;
- ``penalty``: the differentiable interaction penalty; ``kernels``: its fused C kernel and the
  ONE backend setting (``auto`` | ``c`` | ``torch``);
- ``bound``: the MLP interaction bound (mid, box, lip; ℓ1 and ℓ2 over neurons) and the feature-wise
  MLP of each kind, with soundness and tightness;
- ``object``: ``MLPInteractions.of(crosscoder, mlp)``, which holds and caches what they all read;
- ``measures``: the same quantities as functions of ``(codes, W_dec_LHD, mlp)``;
- ``ablation``: MLP ablation fidelity (the paper's Figure 2).
"""
