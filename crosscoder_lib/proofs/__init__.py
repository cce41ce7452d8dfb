"""Compact proofs through a crosscoder (SPEC §4): ``attention`` (float64 attention and LayerNorm with
their change bounds), ``layerwise`` (the certified layer-wise error bound), ``qk_split``, ``length``
(proof length, and the one FLOP model of a forward pass); ``bounds`` is the old import path. The MLP
interaction bound they build on is :mod:`crosscoder_lib.interactions.bound`."""
