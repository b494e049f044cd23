"""The operator under load: 100 RLHFJobs applied at once against the Kubernetes
emulator (kmock, on 127.0.0.1), the real kopf operator in this process, and a
fake kubelet that marks pods Running.

Measured per job (medians printed):
- reconcile seconds: one run of `reconcile` (validate, plan, create children,
  status), timed around the function the handlers call;
- seconds from apply to phase Starting (children created) and to Running;
- API calls the operator made for the job (requests naming it or its
  children), and all operator requests divided by the number of jobs
  (shared watches and events included).

    python benchmarks/operator.py               # 100 jobs
    python benchmarks/operator.py --jobs 20
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlhf_operator.k8s import handlers  # noqa: E402
from tests.k8s.cluster import (  # noqa: E402
    TEST_USER_AGENT,
    Cluster,
    FakeKubelet,
    OperatorThread,
    config,
    write_kubeconfig,
)
from tests.k8s.emulator import EmulatorThread  # noqa: E402

durations: list[float] = []
slowest: dict[str, float] = {}  # job -> its slowest reconcile (planning + creating children)
_lock = threading.Lock()


def timed_reconcile(original: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            took = time.perf_counter() - t0
            name = str((args[0].get("metadata") or {}).get("name"))
            with _lock:
                durations.append(took)
                slowest[name] = max(slowest.get(name, 0.0), took)

    return wrapper


def job_manifest(name: str) -> dict[str, Any]:
    job = yaml.safe_load((ROOT / "examples" / "tiny-ppo.yaml").read_text())
    job = copy.deepcopy(job)
    job["metadata"] = {"name": name}
    job["spec"]["resources"] = {"local": {"slots": 2}}
    return job


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()

    handlers.reconcile = timed_reconcile(handlers.reconcile)  # type: ignore[assignment]
    emulator = EmulatorThread().start()
    tmp = Path(tempfile.mkdtemp())
    cluster = Cluster(emulator, write_kubeconfig(tmp / "kubeconfig", emulator.url))
    kubelet = FakeKubelet(cluster).start()
    operator = OperatorThread(config(resync_seconds=2.0, retry_seconds=2.0), cluster.kubeconfig)
    operator.start()
    names = [f"bench-{i:03d}" for i in range(args.jobs)]
    first_request = len(emulator.requests())
    applied: dict[str, float] = {}
    starting: dict[str, float] = {}
    running: dict[str, float] = {}
    try:

        def apply(name: str) -> None:
            cluster.apply_job(job_manifest(name))
            applied[name] = time.perf_counter()

        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(apply, names))
        while len(running) < len(names):
            if time.perf_counter() - t0 > args.timeout:
                print(f"timeout: {len(running)} of {len(names)} jobs running", file=sys.stderr)
                return 1
            now = time.perf_counter()
            for item in cluster.items("/apis/rlhf.dev/v1alpha1/namespaces/default/rlhfjobs"):
                name = item["metadata"]["name"]
                phase = (item.get("status") or {}).get("phase")
                if phase in ("Starting", "Running") and name not in starting:
                    starting[name] = now
                if phase == "Running" and name not in running:
                    running[name] = now
            time.sleep(0.02)
        wall = time.perf_counter() - t0
        requests = [
            r
            for r in emulator.requests()[first_request:]
            if r.headers.get("User-Agent") != TEST_USER_AGENT
        ]
    finally:
        operator.stop()
        kubelet.stop()
        emulator.stop()

    per_job = []
    for name in names:
        count = 0
        for r in requests:
            target = r.name
            if not target and isinstance(r.data, dict):  # a create names its object in the body
                target = (r.data.get("metadata") or {}).get("name")
            if target and (target == name or str(target).startswith(name + "-")):
                count += 1
        per_job.append(count)
    to_start = [starting[n] - applied[n] for n in names]
    to_run = [running[n] - applied[n] for n in names]
    print(f"jobs: {len(names)} applied at once, all Running after {wall:.2f} s")
    print(f"reconciles: {len(durations)} ({len(durations) / len(names):.1f} per job)")
    print(f"median reconcile seconds (all, mostly resyncs): {statistics.median(durations):.4f}")
    print(
        "median of each job's slowest reconcile (validate, plan, create children) seconds: "
        f"{statistics.median(slowest[n] for n in names):.3f}"
    )
    print(f"median seconds apply -> Starting: {statistics.median(to_start):.3f}")
    print(f"median seconds apply -> Running: {statistics.median(to_run):.3f}")
    print(
        f"median API calls per job (naming the job or its children): {statistics.median(per_job):.0f}"
    )
    print(
        f"operator API requests per job (all, incl. shared watches): {len(requests) / len(names):.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
