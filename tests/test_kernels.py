"""The penalty's backends (one public setting), the kernel cache's safety, and the thread pool.

Each cache test gets its own cache folder (``XDG_CACHE_HOME``), so it builds and loads afresh.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch

from crosscoder_lib.crosscoder.activations import SparseCodes
from crosscoder_lib.interactions import kernels
from crosscoder_lib.interactions.kernels import cache
from crosscoder_lib.interactions.kernels.fused import ThreadPool
from crosscoder_lib.interactions.measures import interaction_penalty
from crosscoder_lib.interactions.mlp import MLPWeights

ROOT = Path(__file__).resolve().parents[1]
needs_cc = pytest.mark.skipif(subprocess.run(["sh", "-c", "command -v ${CC:-cc}"], capture_output=True).returncode,
                              reason="no C compiler")
root_only = pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0,
                               reason="giving a file to another user needs root")


@pytest.fixture
def own_cache(tmp_path, monkeypatch) -> Path:
    """A fresh cache root for this test; the library's folder inside it."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "crosscoder_lib"


def first_library(folder: Path) -> Path:
    """Where the first flag set's library lives in ``folder`` (the name a planter would predict)."""
    return cache.library_path(folder, cache.compiler(), cache.FLAG_SETS[0])


def small_case():
    g = torch.Generator().manual_seed(0)
    mlp = MLPWeights(torch.randn(2, 6, 5, generator=g), torch.zeros(2, 5), torch.randn(2, 5, 6, generator=g),
                     torch.zeros(2, 6), "relu")
    idx = torch.stack([torch.randperm(12, generator=g)[:3] for _ in range(7)])
    return SparseCodes(idx, torch.rand(7, 3, generator=g)), torch.randn(2, 12, 6, generator=g), mlp


# -- the setting ----------------------------------------------------------------------------------

def test_setting_is_checked_and_restored():
    before = kernels.get_backend()
    with pytest.raises(ValueError, match="choose one of .*auto.*c.*torch"):
        kernels.set_backend("fast")
    with pytest.raises(RuntimeError, match="boom"):
        with kernels.use_backend("torch"):
            assert kernels.get_backend() == "torch"
            assert kernels.kernel_status().backend == "torch"
            raise RuntimeError("boom")
    assert kernels.get_backend() == before


def _status(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crosscoder_lib.interactions.kernels", "status"], capture_output=True,
                          text=True, env=os.environ | {"PYTHONPATH": str(ROOT)} | env, cwd=ROOT)


def test_environment_variable_gives_the_initial_setting():
    out = _status({"CROSSCODER_LIB_KERNEL": "0"})
    assert out.returncode == 0, out.stderr
    assert "setting: torch" in out.stdout and "backend for float32 CPU penalties: torch" in out.stdout
    bad = _status({"CROSSCODER_LIB_KERNEL": "gpu"})
    assert bad.returncode == 2 and "CROSSCODER_LIB_KERNEL" in bad.stderr and "'gpu'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_without_a_compiler_auto_falls_back_and_c_says_why(own_cache, monkeypatch):
    monkeypatch.setenv("CC", "no-such-compiler")
    codes, W, mlp = small_case()
    with kernels.use_backend("torch"):
        ref = interaction_penalty(codes, W, mlp).penalty
    with kernels.use_backend("auto"):
        with pytest.warns(UserWarning, match="no C compiler.*PyTorch path"):
            got = interaction_penalty(codes, W, mlp).penalty
        status = kernels.kernel_status()
    assert torch.equal(got, ref)
    assert status.backend == "torch" and "no-such-compiler" in status.reason and status.library is None
    with kernels.use_backend("c"), pytest.raises(RuntimeError, match="backend is 'c'.*no C compiler"):
        interaction_penalty(codes, W, mlp)
    with pytest.raises(RuntimeError, match="no C compiler"):
        kernels.build()


@needs_cc
def test_build_and_status(own_cache):
    with kernels.use_backend("auto"):
        lib = kernels.build()
        status = kernels.kernel_status()
    assert lib.parent == own_cache and lib.exists()
    assert status.setting == "auto" and status.backend == "c" and status.library == lib and status.reason is None
    assert cache.untrusted(lib) is None


@needs_cc
def test_command_line_build(own_cache):
    out = subprocess.run([sys.executable, "-m", "crosscoder_lib.interactions.kernels", "build"], capture_output=True,
                         text=True, env=os.environ | {"PYTHONPATH": str(ROOT)}, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert str(own_cache) in out.stdout and any(own_cache.glob("penalty_*.so"))


# -- the cache (each of these failed on the code before the kernels module) -------------------------

@needs_cc
def test_builds_inside_the_cache_when_tmp_is_another_file_system(own_cache, tmp_path, monkeypatch):
    """A temporary folder in /tmp renamed into the cache fails with EXDEV where /tmp is another
    file system; the build happens inside the cache folder instead."""
    other = tmp_path / "other_fs"
    other.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(other))
    real_replace = os.replace

    def replace(src, dst):
        if (str(other) in str(src)) != (str(other) in str(dst)):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with kernels.use_backend("c"):
        lib = kernels.build()
    assert lib.parent == own_cache and cache.untrusted(lib) is None
    assert not list(own_cache.glob(".build-*"))  # the work folder is gone


@needs_cc
def test_cache_folder_is_private_even_under_umask_000(own_cache):
    old = os.umask(0)
    try:
        lib = kernels.build()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(own_cache).st_mode) == 0o700
    for path in (lib, cache.record_path(lib)):
        assert not os.stat(path).st_mode & 0o022, f"{path} is writable by others"


@needs_cc
def test_an_existing_world_writable_cache_folder_is_made_private(own_cache):
    own_cache.mkdir(parents=True)
    os.chmod(own_cache, 0o777)
    kernels.build()
    assert stat.S_IMODE(os.stat(own_cache).st_mode) == 0o700


@root_only
def test_a_cache_folder_of_another_user_is_refused(own_cache):
    own_cache.mkdir(parents=True)
    os.chown(own_cache, 12345, 12345)
    with kernels.use_backend("auto"):
        status = kernels.kernel_status()
    assert status.backend == "torch" and str(own_cache) in status.reason and "uid 12345" in status.reason


@needs_cc
def test_a_planted_library_is_never_loaded(own_cache, tmp_path):
    """A library planted at the predictable name ran on load; now it is checked (owner, mode, the
    hash recorded at build time), rebuilt, and the warning names it."""
    marker = tmp_path / "planted_ran"
    own_cache.mkdir(parents=True, mode=0o700)
    lib = first_library(own_cache)
    evil = tmp_path / "evil.c"
    evil.write_text(f'#include <stdio.h>\n__attribute__((constructor)) static void ran(void) '
                    f'{{ FILE* f = fopen("{marker}", "w"); if (f) fclose(f); }}\n'
                    "int penalty_columns(void) { return 0; }\nvoid row_sums_and_grad(void) {}\n")
    subprocess.run([cache.compiler(), "-shared", "-fPIC", "-o", str(lib), str(evil)], check=True)
    with kernels.use_backend("auto"), pytest.warns(UserWarning, match=f"rebuilt {lib}.*missing"):
        status = kernels.kernel_status()
    assert not marker.exists(), "the planted library ran"
    assert status.backend == "c" and status.library == lib and cache.untrusted(lib) is None
    codes, W, mlp = small_case()
    with kernels.use_backend("torch"):
        ref = interaction_penalty(codes, W, mlp).penalty
    with kernels.use_backend("c"):
        assert interaction_penalty(codes, W, mlp).penalty.item() == pytest.approx(ref.item(), rel=1e-6)


@needs_cc
def test_a_library_with_a_planted_record_is_caught_by_its_hash_or_owner(own_cache):
    lib, _ = cache.build()
    lib.write_bytes(lib.read_bytes() + b"\0")  # changed after its record was written
    assert "does not match the hash" in cache.untrusted(lib)
    lib, _ = cache.build()
    os.chmod(lib, 0o777)
    assert "writable by group or others" in cache.untrusted(lib)
    if os.getuid() == 0:
        os.chmod(lib, 0o700)
        os.chown(cache.record_path(lib), 12345, 12345)
        assert "belongs to uid 12345" in cache.untrusted(lib)


@needs_cc
def test_a_corrupt_library_is_rebuilt_not_a_reason_to_give_up(own_cache):
    """A corrupt library disabled the kernel in every later process, with no word of what to delete;
    now it fails its hash check, is rebuilt, and the warning names the file."""
    lib, _ = cache.build()
    lib.write_bytes(lib.read_bytes()[:100])
    with kernels.use_backend("auto"), pytest.warns(UserWarning, match=f"rebuilt {lib}"):
        status = kernels.kernel_status()
    assert status.backend == "c" and cache.untrusted(lib) is None


@needs_cc
def test_a_library_that_passes_its_checks_but_fails_to_load_is_rebuilt_once(own_cache, monkeypatch):
    real_load, calls = cache.load, []

    def load(path):
        calls.append(path)
        if len(calls) == 1:
            raise OSError(f"{path}: invalid ELF header")
        return real_load(path)

    monkeypatch.setattr(cache, "load", load)
    with kernels.use_backend("c"):
        assert kernels.kernel_status().backend == "c"
    assert len(calls) == 2


@needs_cc
def test_a_library_that_never_loads_names_the_file_to_delete(own_cache, monkeypatch):
    def load(path):
        raise OSError(f"{path}: invalid ELF header")

    monkeypatch.setattr(cache, "load", load)
    with pytest.raises(RuntimeError, match=f"delete {own_cache}/penalty_.*\\.so"):
        kernels.build()


# -- the thread pool -------------------------------------------------------------------------------

def test_thread_pool_shuts_down_the_executor_it_replaces():
    pool = ThreadPool("test_pool")
    first = pool.get(2)
    assert pool.get(2) is first
    list(first.map(lambda i: time.sleep(0.01), range(2)))
    second = pool.get(3)
    assert second is not first
    with pytest.raises(RuntimeError, match="shutdown"):
        first.submit(lambda: None)
    list(second.map(lambda i: time.sleep(0.01), range(3)))
    deadline = time.time() + 5
    while time.time() < deadline:
        alive = [t for t in threading.enumerate() if t.name.startswith("test_pool") and t.is_alive()]
        if len(alive) <= 3:
            break
        time.sleep(0.05)
    assert len(alive) <= 3, [t.name for t in alive]
    pool.get(1)
