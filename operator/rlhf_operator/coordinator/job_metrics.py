"""One job's Prometheus metrics, served by its coordinator (names in `metrics_names`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from rlhf_operator import metrics_names as names
from rlhf_operator.coordinator.outputs import IterationRecord

# The job's name. Not "job": Prometheus gives every scraped series a target label
# `job` (the scrape job) and renames a series' own to exported_job, so a query by job
# would merge every RLHF job into one line. The namespace comes from the scrape
# target's labels (kubernetes_sd, the PodMonitor), as for any pod.
JOB_LABEL = "rlhfjob"

_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)


class JobMetrics:
    def __init__(self, job: str) -> None:
        self.job = job
        self.registry = CollectorRegistry()
        r = self.registry
        self.iteration_seconds = Histogram(
            names.JOB_ITERATION_SECONDS,
            "Wall-clock seconds of one iteration.",
            [JOB_LABEL],
            registry=r,
            buckets=_BUCKETS,
        )
        self.call_seconds = Histogram(
            names.JOB_CALL_SECONDS,
            "Measured seconds of one call (MFC).",
            [JOB_LABEL, "call"],
            registry=r,
            buckets=_BUCKETS,
        )
        self.realloc_seconds = Histogram(
            names.JOB_REALLOCATION_SECONDS,
            "Seconds spent reallocating parameters per iteration.",
            [JOB_LABEL],
            registry=r,
            buckets=_BUCKETS,
        )
        self.realloc_bytes = Counter(
            names.JOB_REALLOCATION_BYTES_TOTAL.removesuffix("_total"),
            "Bytes of parameters moved between layouts.",
            [JOB_LABEL],
            registry=r,
        )
        self.tokens_per_second = Gauge(
            names.JOB_TOKENS_PER_SECOND,
            "Prompt and response tokens per second, last iteration.",
            [JOB_LABEL],
            registry=r,
        )
        self.reward = Gauge(
            names.JOB_REWARD_MEAN, "Mean reward, last iteration.", [JOB_LABEL], registry=r
        )
        self.kl = Gauge(
            names.JOB_KL, "Mean KL to the reference, last iteration.", [JOB_LABEL], registry=r
        )
        self.iteration = Gauge(
            names.JOB_ITERATION, "Iterations completed.", [JOB_LABEL], registry=r
        )

    def observe(self, record: IterationRecord) -> None:
        job = self.job
        self.iteration_seconds.labels(job).observe(record.seconds)
        for call, timing in record.calls.items():
            self.call_seconds.labels(job, call).observe(timing.seconds)
        self.realloc_seconds.labels(job).observe(record.extra.get("reallocation_seconds", 0.0))
        self.realloc_bytes.labels(job).inc(record.extra.get("reallocation_bytes", 0.0))
        self.tokens_per_second.labels(job).set(record.tokens_per_second)
        if record.reward_mean == record.reward_mean:  # not NaN
            self.reward.labels(job).set(record.reward_mean)
        self.kl.labels(job).set(record.kl)
        self.iteration.labels(job).set(record.iteration)

    def serve(self, port: int, address: str = "127.0.0.1") -> int:
        """Serve /metrics; port 0 picks a free one. Returns the port."""
        server, _ = start_http_server(port, addr=address, registry=self.registry)
        return int(server.server_port)
