"""Old import path of the compact-proof pieces, kept until the chapters and the facade import them
from the modules that define them (or from ``crosscoder_lib``):

- :mod:`crosscoder_lib.proofs.attention`: ``attention_scores``, ``attention_weights`` (attention and
  LayerNorm in float64, and their change bounds);
- :mod:`crosscoder_lib.proofs.layerwise`: ``certified_error_bound`` (the layer-wise error bound);
- :mod:`crosscoder_lib.proofs.qk_split`: ``ln1_decoder``, ``qk_split``;
- :mod:`crosscoder_lib.proofs.length`: ``forward_flops`` (the one FLOP model of a forward pass),
  ``proof_length``;
- :mod:`crosscoder_lib.interactions.bound` and :mod:`crosscoder_lib.interactions.measures`:
  ``soundness``, ``tightness``, ``mlp_interaction_bound`` (an MLP interaction quantity).
"""

from __future__ import annotations

from crosscoder_lib.interactions.bound import soundness, tightness
from crosscoder_lib.interactions.measures import mlp_interaction_bound
from crosscoder_lib.proofs.attention import attention_scores, attention_weights
from crosscoder_lib.proofs.layerwise import certified_error_bound
from crosscoder_lib.proofs.length import forward_flops, proof_length
from crosscoder_lib.proofs.qk_split import ln1_decoder, qk_split

__all__ = ["attention_scores", "attention_weights", "certified_error_bound", "forward_flops", "ln1_decoder",
           "mlp_interaction_bound", "proof_length", "qk_split", "soundness", "tightness"]
