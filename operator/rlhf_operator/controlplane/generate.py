"""Regenerate the checked-in gRPC stubs from the control plane's `.proto` files.

    python -m rlhf_operator.controlplane.generate          # rewrite the stubs
    python -m rlhf_operator.controlplane.generate --check  # exit 1 if they are stale

Runs `python -m grpc_tools.protoc` (a dev dependency, so that neither image
needs it) with the `operator/` directory as the include root, so the generated
modules import each other as `rlhf_operator.controlplane.v1...`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
INCLUDE_ROOT = PACKAGE_DIR.parent.parent  # the directory holding rlhf_operator/
PROTOS = ("v1/control.proto",)
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generated_names(proto: str) -> list[str]:
    """The stub files protoc writes for one proto, relative to this package."""
    stem = proto.removesuffix(".proto")
    return [stem + suffix for suffix in SUFFIXES]


def generate_into(out_dir: Path) -> None:
    """Write the stubs of every proto under `out_dir` (mirroring the package layout)."""
    relative = [str(Path("rlhf_operator/controlplane") / proto) for proto in PROTOS]
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{INCLUDE_ROOT}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *relative,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"protoc failed: {done.stderr.strip() or done.stdout.strip()}")


def stale_files() -> list[str]:
    """Checked-in stubs that differ from freshly generated ones (or are missing)."""
    stale = []
    with tempfile.TemporaryDirectory() as tmp:
        generate_into(Path(tmp))
        fresh_root = Path(tmp) / "rlhf_operator" / "controlplane"
        for proto in PROTOS:
            for name in generated_names(proto):
                checked_in = PACKAGE_DIR / name
                fresh = (fresh_root / name).read_bytes()
                if not checked_in.exists() or checked_in.read_bytes() != fresh:
                    stale.append(name)
    return stale


def write_stubs() -> list[str]:
    """Regenerate the checked-in stubs; returns the files written."""
    with tempfile.TemporaryDirectory() as tmp:
        generate_into(Path(tmp))
        fresh_root = Path(tmp) / "rlhf_operator" / "controlplane"
        written = []
        for proto in PROTOS:
            for name in generated_names(proto):
                (PACKAGE_DIR / name).write_bytes((fresh_root / name).read_bytes())
                written.append(name)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlhf_operator.controlplane.generate")
    parser.add_argument("--check", action="store_true", help="only report stale stubs")
    args = parser.parse_args(argv)
    try:
        if args.check:
            stale = stale_files()
            if stale:
                print(
                    f"stale gRPC stubs (run `python -m rlhf_operator.controlplane.generate`): {', '.join(stale)}",
                    file=sys.stderr,
                )
                return 1
            print("gRPC stubs are up to date")
            return 0
        for name in write_stubs():
            print(f"wrote {PACKAGE_DIR / name}")
        return 0
    except (RuntimeError, OSError) as err:
        print(f"generate: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
