"""Compact proofs through a crosscoder (SPEC §4), for GPT-Neo and Llama-family models: ``norms``
(LayerNorm and RMSNorm in float64, and their change bounds), ``rotary`` (RoPE), ``attention``
(float64 attention, with rotary positions and grouped-query attention, and its change bound),
``mlp_change`` (the MLP change bound of each MLP kind), ``layerwise`` (the certified layer-wise
error bound, also over a window of blocks) and ``error_propagation`` (what it reports),
``qk_split``, ``length`` (proof length, and the one FLOP model of a forward pass); ``bounds`` is
the old import path. The MLP interaction bound they build on is
:mod:`crosscoder_lib.interactions.bound`."""
