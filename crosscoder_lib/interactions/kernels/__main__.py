"""``python -m crosscoder_lib.interactions.kernels build|status``: compile the penalty's C kernel, or report the backends.

Exit status: 0 done, 1 the kernel could not be built or loaded (the message says why), 2 a bad
setting (``CROSSCODER_LIB_KERNEL``).
"""

from __future__ import annotations

import argparse
import sys

from crosscoder_lib.interactions.kernels import build, get_backend, kernel_status


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m crosscoder_lib.interactions.kernels",
                                 description="The interaction penalty's fused C kernel.")
    ap.add_argument("command", choices=("build", "status"),
                    help="build: compile (or verify) and load it now; status: the backend in use and why")
    ap.add_argument("--force", action="store_true", help="with build: rebuild even a library that passes its checks")
    args = ap.parse_args(argv)
    try:
        get_backend()
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.command == "build":
        try:
            print(f"built and loaded {build(force=args.force)}")
        except Exception as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        return 0
    st = kernel_status()
    print(f"setting: {st.setting}\nbackend for float32 CPU penalties: {st.backend}\n"
          f"library: {st.library or '-'}\nreason: {st.reason or '-'}\nthreads: {st.threads}\n"
          f"backend for float32 CUDA penalties: {st.gpu_backend}\nGPU reason: {st.gpu_reason or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
