"""The kernel cache: compile ``penalty.c`` once per machine and load only a library we built.

The C source ships as package data beside this module. It is compiled into a private cache folder,
``$XDG_CACHE_HOME/crosscoder_lib`` (default ``~/.cache/crosscoder_lib``), and:

- the folder is created 0700 whatever the umask, must be a real folder owned by the user (else a
  ``PermissionError`` says what to delete), and loses any group/other permission it has;
- a library is compiled inside that folder (a temporary sub-folder) and renamed into place with
  ``os.replace``: atomic, so concurrent builders never see half a file, and on one file system
  (a temporary folder in ``/tmp`` fails with ``EXDEV`` where ``/tmp`` is another one);
- beside each library ``<name>.sha256`` records the hash of what was built. A library is loaded
  only when it and its record are regular files owned by the user, not writable by group or
  others, and the hash matches; anything else (a planted or corrupt file) is rebuilt in its place;
- the name keys the source, the compiler, its flags and this CPU's flags (``-march=native``), so an
  edited source or another machine's library is never loaded.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
from functools import cache
from pathlib import Path

SOURCE = Path(__file__).with_name("penalty.c")
# -march=native first (the name is keyed by this CPU's flags), then without it for compilers that
# reject it. -ffp-contract=off keeps the products of the kernel's two passes bit-identical, so
# "== max" finds the maximal slots exactly.
FLAG_SETS = (("-O3", "-march=native", "-ffp-contract=off"), ("-O3", "-ffp-contract=off"))


def cache_dir() -> Path:
    """Where libraries are built: ``$XDG_CACHE_HOME/crosscoder_lib`` (default ``~/.cache/crosscoder_lib``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "crosscoder_lib"


def compiler() -> str:
    """The C compiler (``$CC``, default ``cc``); a ``RuntimeError`` when it is not on PATH."""
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        raise RuntimeError(f"no C compiler ({cc!r}) on PATH")
    if not hasattr(os, "getuid"):
        raise RuntimeError("the fused kernel's cache checks file owners, which needs a POSIX system")
    return cc


def private_folder(folder: Path) -> Path:
    """``folder``, created 0700 if missing; checked to be a real folder of this user, then made private."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(folder)
    if not stat.S_ISDIR(st.st_mode):
        raise PermissionError(f"the kernel cache {folder} is not a folder (a link?): delete it, or set "
                              "XDG_CACHE_HOME to a folder of yours")
    if st.st_uid != os.getuid():
        raise PermissionError(f"the kernel cache folder {folder} belongs to uid {st.st_uid}, not to you "
                              f"(uid {os.getuid()}): delete it, or set XDG_CACHE_HOME to a folder of yours")
    if st.st_mode & 0o077:
        os.chmod(folder, 0o700)
    return folder


@cache
def _cpu_flags() -> str:
    try:
        return next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    except OSError:
        return ""


@cache
def _source_text() -> str:
    return SOURCE.read_text()


def library_path(folder: Path, cc: str, flags: tuple[str, ...]) -> Path:
    """The library's name in ``folder``: keyed by the source, the compiler, its flags and the CPU."""
    key = hashlib.sha256("\0".join([_source_text(), cc, *flags, _cpu_flags()]).encode()).hexdigest()[:16]
    return folder / f"penalty_{key}.so"


def record_path(lib: Path) -> Path:
    return lib.with_name(lib.name + ".sha256")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def untrusted(lib: Path) -> str | None:
    """Why ``lib`` must not be loaded (missing, not ours, writable by others, hash changed), or None."""
    for path in (lib, record_path(lib)):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return f"{path} is missing"
        if not stat.S_ISREG(st.st_mode):
            return f"{path} is not a regular file"
        if st.st_uid != os.getuid():
            return f"{path} belongs to uid {st.st_uid}, not to you"
        if st.st_mode & 0o022:
            return f"{path} is writable by group or others"
    if _sha256(lib) != record_path(lib).read_text().strip():
        return f"{lib} does not match the hash recorded when it was built"
    return None


def compile_library(lib: Path, cc: str, flags: tuple[str, ...]) -> str | None:
    """Compile the source into ``lib`` (and its hash record); the compiler's error, or None."""
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=lib.parent))  # same file system as lib
    try:
        out, record = work / lib.name, work / "record"
        done = subprocess.run([cc, *flags, "-fPIC", "-shared", "-o", str(out), str(SOURCE)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            return done.stderr.strip()[-500:]
        os.chmod(out, 0o700)  # the compiler's output honours the umask, which may be 000
        record.write_text(_sha256(out) + "\n")
        os.chmod(record, 0o600)
        # The record first: a reader that sees it with the previous library finds a mismatch and
        # rebuilds, never loads an unchecked file.
        os.replace(record, record_path(lib))
        os.replace(out, lib)
        return None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def build(force: bool = False) -> tuple[Path, str | None]:
    """``(path of a verified library, why an existing file there was rebuilt or None)``.

    Reuses a library that passes :func:`untrusted`'s checks unless ``force``; raises
    ``RuntimeError`` with the compiler's message when no flag set compiles.
    """
    cc = compiler()
    folder = private_folder(cache_dir())
    error = None
    for flags in FLAG_SETS:
        lib = library_path(folder, cc, flags)
        why = None if force else untrusted(lib)
        if why is None and not force:
            return lib, None
        replaced = why if os.path.lexists(lib) else None  # a file we would not load: say which
        error = compile_library(lib, cc, flags)
        if error is None:
            return lib, replaced
    raise RuntimeError(f"the C compiler failed: {error}")


def load(lib: Path) -> ctypes.CDLL:
    """The library's two kernels, with their C signatures declared."""
    so = ctypes.CDLL(str(lib))
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    so.penalty_columns.argtypes = [ptr, i64, ptr, ptr, ptr, i64, i64, ptr, i64, i64, ptr, ptr, ptr]
    so.penalty_columns.restype = ctypes.c_int
    so.row_sums_and_grad.argtypes = [ptr, i64, ptr, ptr, i64, i64, ptr, ptr]
    so.row_sums_and_grad.restype = None
    return so
