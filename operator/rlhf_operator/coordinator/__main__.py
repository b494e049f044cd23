"""`python -m rlhf_operator.coordinator`: one job's coordinator, as its pod runs it.

Everything comes from the process contract (`rlhf_operator.coordinator_env`):
the job manifest and the plan from the job's ConfigMap, the control-plane token
from its Secret, checkpoints under the output directory. The worker pods
(started by the operator) register with it; it runs the plan to the end,
patches the RLHFJob's status with progress (iteration, metrics, last
checkpoint) and serves the job's Prometheus metrics.

Exit status: 0 when the job finished (the pod Succeeds); 1 when it cannot go
on (a failed call, a bad config: 2), or `exits.PEER_LOST` when a worker
went away (the worker's pod holds the cause): the pod Fails and the operator
restarts the job's pods, which resume from the newest complete checkpoint (up
to the job's backoffLimit). The reason is the last line on stderr, and in the
file `RLHF_TERMINATION_LOG` names, if set (`exits.ending`).
"""

from __future__ import annotations

import datetime
import logging
import sys
from pathlib import Path
from typing import Any

from rlhf_operator.api.manifests import load_jobs
from rlhf_operator.contract.plan import Plan
from rlhf_operator.controlplane import exits
from rlhf_operator.coordinator.errors import ControlPlaneError, WorkerLost
from rlhf_operator.coordinator.executor import JobRunner
from rlhf_operator.coordinator.job_metrics import JobMetrics
from rlhf_operator.coordinator.outputs import IterationRecord, OutputDir
from rlhf_operator.coordinator.server import Coordinator, CoordinatorConfig
from rlhf_operator.coordinator_env import CoordinatorSettings

log = logging.getLogger("rlhf_operator.coordinator")


def status_patch(record: IterationRecord, checkpoint: Path | None) -> dict[str, Any]:
    """The part of the RLHFJob status the coordinator owns (the operator owns phase and conditions)."""
    status: dict[str, Any] = {
        "iteration": record.iteration,
        "metrics": {
            "rewardMean": record.reward_mean if record.reward_mean == record.reward_mean else None,
            "kl": record.kl,
            "tokensPerSecond": round(record.tokens_per_second, 3),
            "iterationSeconds": round(record.seconds, 3),
        },
    }
    if checkpoint is not None:
        status["lastCheckpoint"] = {
            "iteration": record.iteration,
            "path": str(checkpoint),
            "time": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
    return {"status": status}


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = CoordinatorSettings.from_env()
        jobs, problems = load_jobs(settings.job_file)
        if problems or len(jobs) != 1:
            raise ValueError(
                f"{settings.job_file}: {problems[0] if problems else 'expected one RLHFJob'}"
            )
        job = jobs[0]
        plan = Plan.from_json(Path(settings.plan_file).read_text(encoding="utf-8"))
        token = Path(settings.token_file).read_text(encoding="utf-8").strip()
    except (OSError, ValueError) as err:
        return exits.ending(2, f"coordinator: {err}")
    output = OutputDir(Path(settings.output_dir))
    output.create()
    metrics = JobMetrics(job.metadata.name)
    metrics.serve(settings.metrics_port, address="0.0.0.0")
    patch = None
    if settings.status_sink == "kubernetes":
        from rlhf_operator.k8s.kube import Kube

        kube = Kube.from_kubeconfig()

        def patch(body: dict[str, Any]) -> None:
            kube.patch_job_status(settings.namespace, settings.job_name, body)

    def on_record(record: IterationRecord, checkpoint: Path | None) -> None:
        metrics.observe(record)
        log.info(
            "iteration %d: reward %.4f, %.1f s",
            record.iteration,
            record.reward_mean,
            record.seconds,
        )
        if patch is not None:
            try:
                patch(status_patch(record, checkpoint))
            except Exception as err:  # progress reports must never stop training
                log.warning("could not patch the job's status: %s", err)

    config = CoordinatorConfig(
        job_id=job.metadata.name,
        token=token,
        world_size=plan.nodes * plan.gpus_per_node,
        bind=f"0.0.0.0:{settings.control_port}",
        heartbeat_timeout_s=60.0,
        tls_dir=settings.tls_dir,
    )
    export = Path(job.spec.export.path) if job.spec.export.path else None
    try:
        with Coordinator(config) as coordinator:
            runner = JobRunner(coordinator, job, plan, output, Path(settings.job_file).parent)
            start = runner.setup()
            log.info("starting at iteration %d (%s)", start, "resumed" if start > 1 else "fresh")
            runner.run_to_end(start, on_record, export_path=export)
            runner.shutdown()
    except WorkerLost as err:
        # The worker's own pod says why it went; this exit code tells the
        # operator that the coordinator's failure is only a consequence.
        return exits.ending(exits.PEER_LOST, f"coordinator: {err}")
    except ControlPlaneError as err:
        return exits.ending(1, f"coordinator: {err}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
