"""A stand-in for the coordinator pod, for operator tests that run before the
real coordinator (`python -m rlhf_operator.coordinator`) exists.

It honours the coordinator's process contract (`CoordinatorSettings.from_env`,
the plan and token files) and uses the real control-plane server: it waits
for every worker pod's process to register (token, job id and rank checked by
the server), reports progress into the RLHFJob's status through the API as the
coordinator does, then "trains" until the file `finish` appears in its output
directory (exit 0 after shutting the workers down) or a worker is lost (exit 1,
as a coordinator whose rank died). No training.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from rlhf_operator.coordinator.server import Coordinator, CoordinatorConfig
from rlhf_operator.coordinator.state import WorkerState
from rlhf_operator.coordinator_env import CoordinatorSettings
from rlhf_operator.k8s.kube import Kube


def main() -> int:
    settings = CoordinatorSettings.from_env()
    plan = json.loads(Path(settings.plan_file).read_text())
    world_size = int(plan["nodes"]) * int(plan["gpus_per_node"])
    token = Path(settings.token_file).read_text().strip()
    config = CoordinatorConfig(
        job_id=settings.job_name,
        token=token,
        world_size=world_size,
        bind=f"127.0.0.1:{settings.control_port}",
        tls_dir=settings.tls_dir,
    )
    coordinator = Coordinator(config)
    coordinator.start()
    try:
        workers = coordinator.wait_for_workers(timeout_s=120)
        print(f"registered ranks: {sorted(workers)}", flush=True)
        Kube.from_kubeconfig().patch_job_status(
            settings.namespace,
            settings.job_name,
            {"status": {"iteration": 1, "metrics": {"rewardMean": 0.25}}},
        )
        finish = Path(settings.output_dir) / "finish"
        while not finish.exists():
            lost = [
                r for r, w in coordinator.workers().items() if w.state is not WorkerState.CONNECTED
            ]
            if lost:
                raise RuntimeError(f"lost worker(s) {lost}")
            time.sleep(0.1)
    except Exception as exc:
        print(f"stand-in coordinator: {exc}", file=sys.stderr, flush=True)
        coordinator.stop()
        return 1
    coordinator.shutdown(timeout_s=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
