"""`rlhfctl profile`: measure this machine's device and write a profile the planner reads.

The measurement needs torch, so it runs in a subprocess
(`python -m rlhf_worker.profiling`, the worker package): the operator package
never imports torch. Its timings of the worker's own engine (`measured.engine`,
on CPU) are then turned into the profile's engine terms here, by the planner's
`calibrate`, so the estimator and its profile are solved by one side.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

import yaml

from ..planner.calibrate import calibrate
from ..planner.profiles import ProfileError, read_profile


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "profile",
        help="measure this machine's CPU or GPU into a planner profile",
        description="Time GEMMs, memory copies, kernel launches and an all-reduce on the local "
        "CPU (or GPU when present) and write a device profile (YAML). Use it with "
        "`rlhfctl plan --gpu-type FILE.yaml`, or put it in a directory named by RLHF_PROFILES "
        "and refer to it by name (resources.gpuType).",
    )
    parser.add_argument("--out", help="file to write (default: NAME.yaml here)")
    parser.add_argument("--name", help="profile name (default: cpu, or the GPU's name)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--slots", type=int, default=2, help="CPU slots that share the machine")
    parser.add_argument("--quick", action="store_true", help="fewer shapes, smaller copies")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("rlhf_worker") is None:
        print(
            "rlhfctl profile: needs torch and the worker package (pip install 'rlhf-operator[worker]')",
            file=sys.stderr,
        )
        return 1
    out = Path(args.out or f"{args.name or 'profile'}.yaml")
    cmd = [
        sys.executable,
        "-m",
        "rlhf_worker.profiling",
        "--out",
        str(out),
        "--device",
        args.device,
    ]
    cmd += ["--slots", str(args.slots)]
    if args.name:
        cmd += ["--name", args.name]
    if args.quick:
        cmd.append("--quick")
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0:
        print(f"rlhfctl profile: the measurement failed (exit {done.returncode})", file=sys.stderr)
        return 1
    try:
        profile = read_profile(out)  # what the planner will read must load
        engine = profile.measured.get("engine")
        if engine:
            profile = calibrate(profile, engine)
            header = out.read_text(encoding="utf-8").splitlines()[0]
            text = yaml.safe_dump(profile.to_dict(), sort_keys=False)
            out.write_text(f"{header}\n{text}", encoding="utf-8")
            read_profile(out)
    except ProfileError as exc:
        print(f"rlhfctl profile: {exc}", file=sys.stderr)
        return 1
    return 0
