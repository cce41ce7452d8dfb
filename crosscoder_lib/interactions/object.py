"""One object for the feature interactions in a crosscoder's MLPs: ``MLPInteractions.of(crosscoder, mlp)``.

Every interaction quantity reads the same things: the decoder rows and bias at each block's MLP
input (:func:`crosscoder_lib.interactions.decoder.mlp_input_decoder`), the MLP weights and their
kind, ``G = W_dec · W_in``, ``|G|`` and the neuron weights ``‖W_out[k]‖``. The object holds them,
checks the decoder against the MLP once, and forms each on first use, keeping it while the
decoder is unchanged::

    inter = MLPInteractions.of(crosscoder, mlp)
    inter.dominant_share(codes)          # G formed here ...
    inter.matrix(codes)                  # ... and reused here
    inter.penalty(codes).penalty.backward()   # differentiable through the live decoder and codes

**Cache key.** The identity, version counter, storage, device, dtype and sum of ``W_dec_HXD``,
``b_dec_XD`` and ``input_scale_X`` (or of the decoder rows given to the constructor) and of the MLP's
tensors: an optimizer step, ``fold_input_scale``, ``load_state_dict`` or ``.to()`` changes it, and
the next call rebuilds what it needs. Tensors made under ``torch.inference_mode`` carry no version
counter: change them in place only outside the object's lifetime.
"""

from __future__ import annotations

import torch

from crosscoder_lib.interactions.activation import activation, bounded_by_identity
from crosscoder_lib.interactions.bound import FeatureWiseMLP, MLPBound, feature_wise_mlp, mlp_bound
from crosscoder_lib.interactions.codes import ActiveCodes, checked_codes, read_codes
from crosscoder_lib.interactions.decoder import (
    bias_products,
    block_contributions,
    check_decoder,
    frozen,
    input_products,
    mlp_input_bias,
    mlp_input_decoder,
)
from crosscoder_lib.interactions.kernels.buffers import Workspace
from crosscoder_lib.interactions.mlp import AnyMLP, GatedContributions
from crosscoder_lib.interactions.penalty import (
    G_PRECISIONS,
    InteractionStats,
    PenaltyInputs,
    active_rows,
    check_form,
    check_g_options,
    penalty,
    penalty_inputs,
)
from crosscoder_lib.interactions.quantities import (
    CertifiedWeights,
    InteractionMatrix,
    TokenScores,
    dominant_share,
    interaction_matrix,
    token_interaction_scores,
)
from crosscoder_lib.lm.hookpoints import hookpoint_blocks

F64 = torch.float64


def _stamp(t: torch.Tensor) -> tuple:
    version = -1 if t.is_inference() else t._version
    # The sum as well: fused optimizers (Adam(fused=True), the trainer's) write parameters in place
    # without bumping their version counter. One pass over the tensor, once per call.
    return id(t), version, t.data_ptr(), t.device, t.dtype, float(t.detach().sum())


class MLPInteractions:
    """Feature interactions in the MLPs of one (crosscoder, MLP weights) pair (module docstring).

    ``MLPInteractions(W_dec_LHD, mlp, b_dec_LD)`` builds it from decoder rows and bias at the MLP
    inputs in model units, one row per stacked block of ``mlp`` (``b_dec_LD`` is needed by
    :meth:`bound`, by ablation and, for a gated MLP, by :meth:`matrix` and :meth:`token_scores`);
    :meth:`of` from a crosscoder, whose live weights it reads.
    """

    def __init__(self, W_dec_LHD: torch.Tensor, mlp: AnyMLP, b_dec_LD: torch.Tensor | None = None):
        check_decoder(W_dec_LHD, mlp)
        self.mlp = mlp
        self.crosscoder = None
        self._rows = (W_dec_LHD, b_dec_LD)
        self._cache: dict = {}
        self._key: tuple | None = None
        self._mlp_cache: dict = {}  # what depends on the MLP's weights only (kept across decoder changes)
        self._mlp_key: tuple | None = None
        self._workspace = Workspace()  # G and the penalty's ∂/∂M, reused from one decoder state to the next

    @classmethod
    def of(cls, crosscoder, mlp: AnyMLP) -> MLPInteractions:
        """The interactions of ``crosscoder`` (its MLP-input slots) in the MLPs ``mlp``.

        ``mlp`` may hold more blocks than the crosscoder reads (``mlp_weights(bridge)`` holds all):
        the blocks of its hookpoints (``hookpoint_blocks``, e.g. 8–11 of a window) are taken, in slot order.
        """
        mlp = mlp.for_blocks(hookpoint_blocks(crosscoder.cfg.hookpoints))
        with torch.no_grad():
            inter = cls(mlp_input_decoder(crosscoder)[0], mlp)  # checks the rows against the MLP once
        inter.crosscoder, inter._rows = crosscoder, None
        return inter

    # -- inputs -------------------------------------------------------------------------------
    def decoder(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(W_dec_LHD, b_dec_LD)`` now: live (differentiable) rows and bias at the MLP inputs."""
        return mlp_input_decoder(self.crosscoder) if self.crosscoder is not None else self._rows

    def _sources(self) -> list[torch.Tensor]:
        cc = self.crosscoder
        rows = [cc.W_dec_HXD, cc.b_dec_XD, cc.input_scale_X] if cc is not None else [t for t in self._rows if t is not None]
        return rows + self._mlp_tensors()

    def _mlp_tensors(self) -> list[torch.Tensor]:
        return [t for t in self.mlp if isinstance(t, torch.Tensor)]

    def _cached(self, name: str, build=None, live: torch.Tensor | None = None):
        """``self._cache[name]``, built by ``build()`` unless the decoder changed since (module docstring).

        The detached rows come first; ``live``, rows just computed with their graph, spares decoding twice.
        """
        key = tuple(_stamp(t) for t in self._sources())
        if key != self._key:
            self._cache.clear()
            self._key = key
            mlp_key = key[-len(self._mlp_tensors()):]
            if mlp_key != self._mlp_key:
                self._mlp_cache.clear()
                self._mlp_key = mlp_key
        if "rows" not in self._cache:
            self._cache["rows"] = self._detached_rows(live)
        if name not in self._cache:
            self._cache[name] = build()
        return self._cache[name]

    @torch.no_grad()
    def _detached_rows(self, live: torch.Tensor | None) -> tuple:
        if self.crosscoder is None:
            W, b = self._rows
        else:
            W = live if live is not None else mlp_input_decoder(self.crosscoder)[0]
            b = mlp_input_bias(self.crosscoder)
        return W.detach(), b.detach() if b is not None else None

    @property
    def blocks(self) -> tuple[int, ...]:
        """The model block of each stacked block (what ``l`` in ``[L, ...]`` results stands for)."""
        return self.mlp.model_blocks

    @property
    def W_dec_LHD(self) -> torch.Tensor:
        """The decoder rows at the MLP inputs, detached (cached)."""
        return self._cached("rows")[0]

    @property
    def G(self) -> tuple[torch.Tensor, ...]:
        """``G_m = W_dec_LHD @ W_m`` ``[L, H, N]`` for each of the MLP kind's input matrices (standard: ``(G,)``)."""
        return self._cached("G", lambda: input_products(self.W_dec_LHD, self.mlp, self._workspace))

    @property
    def absG_LHN(self) -> torch.Tensor:
        """``|G|``: the kind's combined magnitude, which ranks features at each neuron."""
        return self._cached("absG", lambda: self.mlp.combined(self.G).abs())

    @property
    def w_LN(self) -> torch.Tensor:
        """Neuron weights ``‖W_out[l][n]‖`` on the decoder's device and dtype."""
        return self._cached("w", lambda: self.mlp.W_out_norms_LN().to(device=self.W_dec_LHD.device,
                                                                       dtype=self.W_dec_LHD.dtype))

    @property
    def beta(self) -> tuple[torch.Tensor, ...]:
        """``β_m = b_dec_LD @ W_m + b_m`` ``[L, N]`` per input matrix: what no feature carries."""
        return self._cached("beta", self._beta)

    def _beta(self) -> tuple[torch.Tensor, ...]:
        b_dec_LD = self._cached("rows")[1]
        if b_dec_LD is None:
            raise ValueError("this MLPInteractions was built from decoder rows without a bias: pass b_dec_LD "
                             "(mlp_input_decoder(crosscoder)[1]) or use MLPInteractions.of(crosscoder, mlp)")
        return bias_products(b_dec_LD, self.mlp)

    def _pairs(self) -> CertifiedWeights | None:
        """The pair weights of the matrix and the scores: None (``|p|``) for a standard MLP."""
        if self.mlp.kind == "standard":
            return None
        if self.mlp.kind != "gated":
            raise ValueError(f"no pair weights for MLP kind {self.mlp.kind!r}")
        absG = tuple(G_m.abs() for G_m in self.G)
        abs_beta = tuple(b.abs().to(absG[0]) for b in self.beta)
        act_fn = self.mlp.act_fn
        sigma0 = None if bounded_by_identity(act_fn) else abs(float(activation(torch.zeros((), dtype=F64), act_fn)))
        return CertifiedWeights(absG, abs_beta, self.mlp.lipschitz, sigma0)

    def float64(self) -> MLPInteractions:
        """The same interactions in float64 (decoder and MLP), as the bounds compute them (cached)."""
        if all(t.dtype == F64 for t in self._sources() if t.is_floating_point()):
            return self
        return self._cached("float64", self._float64)

    def _float64(self) -> MLPInteractions:
        W, b = self._cached("rows")
        return MLPInteractions(W.to(F64), self.mlp.to(dtype=F64), b.to(F64) if b is not None else None)

    def read(self, codes) -> ActiveCodes:
        """``codes`` unpacked, checked against the dictionary, active slots first (:mod:`.codes`)."""
        return read_codes(codes, self.W_dec_LHD.shape[1])

    # -- quantities ---------------------------------------------------------------------------
    def penalty(self, codes, form: str = "unweighted", chunk_tokens: int | None = None, *,
                g_precision: str = "float32", g_rows: str = "all") -> InteractionStats:
        """The interaction penalty ``L_int`` and the dominant share of a batch (:mod:`.penalty`),
        differentiable through the codes' values and the live decoder rows.

        ``g_precision="bfloat16"`` forms the ``G`` products in bfloat16 and ``g_rows="active"`` only
        the rows of the batch's active features (both opt in, both round differently from the
        default; :mod:`.penalty`)."""
        check_form(form)
        check_g_options(g_precision, g_rows)
        W_live = self.decoder()[0]
        if g_rows == "active":  # rows depend on the batch: formed per call, never cached
            self._cached("rows", live=W_live)  # first: a new state reuses W_live
            active = self.read(codes)
            inputs = self._penalty_inputs_with(g_precision, active_rows(*active, self.W_dec_LHD.shape[1]))
        else:
            key = "penalty" if g_precision == "float32" else f"penalty:{g_precision}"
            build = self._penalty_inputs if key == "penalty" else lambda: self._penalty_inputs_with(g_precision, None)
            inputs = self._cached(key, build, live=W_live)
            active = self.read(codes)
        return penalty(active, W_live, inputs, self.w_LN if form == "weighted" else None, chunk_tokens)

    def _penalty_inputs(self) -> PenaltyInputs:
        W_in = tuple(frozen(W_m, self.W_dec_LHD) for W_m in self.mlp.input_weights())
        return PenaltyInputs(self.mlp.combined(self.G), self.G, W_in, self.mlp.chain, None, self._workspace)

    def _penalty_inputs_with(self, g_precision: str, rows: torch.Tensor | None) -> PenaltyInputs:
        W = self.W_dec_LHD
        low = None
        if G_PRECISIONS[g_precision] != W.dtype:  # the frozen MLP weights, cast once
            name = f"W_in:{g_precision}:{W.device}"
            if name not in self._mlp_cache:
                self._mlp_cache[name] = tuple(W_m.detach().to(device=W.device, dtype=G_PRECISIONS[g_precision])
                                              for W_m in self.mlp.input_weights())
            low = self._mlp_cache[name]
        return penalty_inputs(W, self.mlp, g_precision=g_precision, rows=rows, low_weights=low,
                              workspace=self._workspace)

    def dominant_share(self, codes, chunk_tokens: int | None = None) -> torch.Tensor:
        """Mean over ``(l, t, n)`` of ``max_v |p| / Σ_v |p|`` (:func:`.quantities.dominant_share`)."""
        return dominant_share(self.read(codes), self.absG_LHN, chunk_tokens)

    def matrix(self, codes, chunk_tokens: int | None = None) -> InteractionMatrix:
        """Pairwise interactions ``M[i, j]`` (:func:`.quantities.interaction_matrix`; gated: certified weights)."""
        return interaction_matrix(self.read(codes), self.absG_LHN, self.w_LN, chunk_tokens,
                                  self._cached("pairs", self._pairs))

    def token_scores(self, codes, chunk_tokens: int | None = None) -> TokenScores:
        """Per-token interaction scores ``T(t)`` (:func:`.quantities.token_interaction_scores`; gated:
        certified weights, so ``Lip(σ)·T_l(t)`` bounds block ``l``'s error for both kinds)."""
        return token_interaction_scores(self.read(codes), self.absG_LHN, self.w_LN, chunk_tokens,
                                        self._cached("pairs", self._pairs))

    def contributions(self, codes) -> torch.Tensor | GatedContributions:
        """``p_LTNK[l, t, n, k] = val[t, k] · G_l[idx[t, k], n]`` for every slot, padded ones giving 0;
        for a gated MLP a :class:`GatedContributions` of ``p_gate`` and ``p_up`` (one per input matrix).

        Memory ``L·T·N·K``: meant for short inputs and tests. Differentiable in the codes' values
        and, when autograd is on and the decoder requires grad, in the live decoder rows.
        """
        W_live = self.decoder()[0] if torch.is_grad_enabled() else None
        G = input_products(W_live, self.mlp) if W_live is not None and W_live.requires_grad else self.G
        idx_BK, val_BK = checked_codes(codes, self.W_dec_LHD.shape[1])
        return self.mlp.contributions(tuple(torch.stack([block_contributions(idx_BK, val_BK, G_HN) for G_HN in G_m])
                                            for G_m in G))

    @torch.no_grad()
    def feature_wise(self, codes, chunk_tokens: int = 256) -> list[FeatureWiseMLP]:
        """Every block's MLP on the reconstruction, its feature-wise explanation ``g`` and both
        bounds per token, in float64 (:mod:`.bound`)."""
        f64 = self.float64()
        idx_BK, val_BK = self.read(codes)
        active = ActiveCodes(idx_BK, val_BK.detach().to(F64))
        return [feature_wise_mlp(active, tuple(G[l] for G in f64.G), tuple(b[l] for b in f64.beta), f64.mlp, l,
                                 chunk_tokens) for l in range(self.mlp.n_blocks)]

    def bound(self, codes, chunk_tokens: int = 256) -> MLPBound:
        """SPEC §3's bound on ``‖ε(t)‖`` for every block and token, with the actual error (:mod:`.bound`)."""
        return mlp_bound(self.feature_wise(codes, chunk_tokens))
