"""Install the peer frameworks into their own venv, ``benchmarks/peers/.venv`` (gitignored).

    python benchmarks/peers/install.py [--fresh]

The project's venv does not change: the peers pin other versions of what the project uses
(SAELens 6.54 wants ``transformer-lens<4``, the project runs TransformerLens 4), so each side runs
in its own interpreter and ``bench_peers.py`` starts one process per framework. This creates the
venv, installs ``requirements.txt`` (torch pinned to the project's version, the CPU build), then
tries ``dictionary-learning`` on its own, under the same pins as constraints: it is timed only if
it installs beside the others (a failure is reported, not fatal). ``--fresh`` deletes the venv
first; ``--venv`` installs elsewhere (to check the recipe without touching the one in use).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv"
REQUIREMENTS = HERE / "requirements.txt"
OPTIONAL = ["dictionary-learning==0.1.0"]


def venv_python(folder: Path = VENV) -> Path:
    """The peers' interpreter (it exists once :func:`install` has run)."""
    return folder / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def pip(folder: Path, *args: str) -> int:
    cmd = [str(venv_python(folder)), "-m", "pip", "install", "--disable-pip-version-check", *args]
    print("$", " ".join(cmd), flush=True)
    return subprocess.call(cmd)


def drop_broken_torchvision(folder: Path) -> None:
    """nnsight (dictionary-learning's dependency) pulls torchvision from PyPI, whose build does not
    load against the CPU torch ("operator torchvision::nms does not exist") and then breaks every
    ``import transformers``; nothing timed here uses it, so it is removed."""
    python = str(venv_python(folder))
    broken = subprocess.call([python, "-c", "import torchvision"], stderr=subprocess.DEVNULL)
    if broken and subprocess.call([python, "-m", "pip", "show", "-q", "torchvision"]) == 0:
        print("torchvision does not load against the CPU torch: uninstalling it (no peer step uses it)")
        subprocess.check_call([python, "-m", "pip", "uninstall", "-y", "-q", "torchvision"])


def install(fresh: bool = False, folder: Path = VENV) -> dict[str, bool]:
    """Create the venv in ``folder`` and install the peers; which optional packages installed."""
    if fresh and folder.exists():
        shutil.rmtree(folder)
    if not venv_python(folder).exists():
        venv.EnvBuilder(with_pip=True).create(folder)
    if pip(folder, "-r", str(REQUIREMENTS)) != 0:
        raise SystemExit(f"installing {REQUIREMENTS} into {folder} failed (pip's message above); fix the pin "
                         f"there and re-run `python benchmarks/peers/install.py`")
    # the pins hold as constraints: dictionary-learning's circuitsvis asks for any torch >= 2.1.1, and
    # without them pip replaces the CPU torch with the newest CUDA build
    optional = {name: pip(folder, name, "-c", str(REQUIREMENTS)) == 0 for name in OPTIONAL}
    drop_broken_torchvision(folder)
    for name, ok in optional.items():
        if not ok:
            print(f"{name} did not install beside the pinned peers: bench_peers.py will skip it")
    with (folder / "freeze.txt").open("w") as out:
        subprocess.call([str(venv_python(folder)), "-m", "pip", "freeze", "--disable-pip-version-check"], stdout=out)
    print(f"peers installed in {folder} (versions: {folder / 'freeze.txt'})")
    return optional


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fresh", action="store_true", help="delete the peers' venv first")
    ap.add_argument("--venv", type=Path, default=VENV, help="where (bench_peers.py uses the default)")
    args = ap.parse_args(argv)
    install(args.fresh, args.venv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
