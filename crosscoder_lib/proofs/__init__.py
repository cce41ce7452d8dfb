"""Compact proofs through a crosscoder: the MLP bound, the layer-wise bound, the QK split, proof length."""
