"""The run's output directory: a documented contract tools can rely on.

    OUTPUT/
      metrics.jsonl    one JSON object per completed iteration (below)
      summary.json     written at the end (and on failure): the run in one object
      checkpoints/     iter-NNNNNNNN/ directories, complete once COMMITTED exists
      export/          the final actor in Hugging Face format (config, safetensors, tokenizer)
      models/          models built locally for `tiny` sources
      logs/            one log per worker process (local mode)

Every line of metrics.jsonl holds at least:

    iteration          1-based number of the completed iteration
    reward_mean        mean reward of the iteration's responses
    kl                 mean per-token KL to the reference policy (0 without one)
    seconds            wall-clock seconds of the iteration
    tokens_per_second  (prompt + response tokens of the iteration) / seconds
    samples_per_second responses / seconds
    calls              {call name: {"seconds": measured, "estimated_seconds": the plan's,
                        "peak_bytes": the largest over the call's ranks of the bytes a rank
                        held at once during the call (CUDA: max_memory_allocated; CPU: the
                        workers' allocation tracker, rlhf_worker/runtime/memory.py),
                        "estimated_peak_bytes": the plan's memory_bytes for the call}}

and may hold more (per-call metrics; reallocation seconds, bytes received and bytes
copied within ranks: reallocation_seconds, _bytes, _local_bytes). On resume,
lines past the restored checkpoint's iteration are dropped, so the file always
describes one consistent run.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


@dataclass
class CallTiming:
    seconds: float
    estimated_seconds: float | None = None
    peak_bytes: int | None = None
    estimated_peak_bytes: int | None = None


@dataclass
class IterationRecord:
    iteration: int
    reward_mean: float
    kl: float
    seconds: float
    tokens_per_second: float
    samples_per_second: float
    calls: dict[str, CallTiming] = field(default_factory=dict)
    extra: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        data = asdict(self)
        extra = data.pop("extra")
        return json.dumps({**data, **extra}, sort_keys=False)


@dataclass(frozen=True)
class OutputDir:
    root: Path

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def summary(self) -> Path:
        return self.root / SUMMARY_FILE

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def export(self) -> Path:
        return self.root / "export"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def create(self) -> None:
        for path in (self.root, self.checkpoints, self.models, self.logs):
            path.mkdir(parents=True, exist_ok=True)

    def append_metrics(self, record: IterationRecord) -> None:
        """Append one iteration's line, durably (a crash never leaves half a line behind)."""
        with self.metrics.open("a", encoding="utf-8") as fh:
            fh.write(record.to_json() + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def read_metrics(self) -> list[dict[str, Any]]:
        """The records written so far (a torn last line, from a crash mid-write, is ignored)."""
        if not self.metrics.exists():
            return []
        records = []
        for line in self.metrics.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
        return records

    def truncate_metrics(self, last_iteration: int) -> None:
        """Keep only the records up to `last_iteration` (resuming from that checkpoint)."""
        kept = [r for r in self.read_metrics() if int(r.get("iteration", 0)) <= last_iteration]
        tmp = self.metrics.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        os.replace(tmp, self.metrics)

    def write_summary(self, summary: dict[str, Any]) -> None:
        tmp = self.summary.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.summary)


def format_progress(
    iteration: int, total: int, reward: float, kl: float, tokens_per_second: float, eta_s: float
) -> str:
    """One progress line: a bar, the iteration, reward, KL, throughput and time left."""
    width = 20
    filled = round(width * iteration / total) if total else width
    bar = "#" * filled + "." * (width - filled)
    minutes, seconds = divmod(max(0, round(eta_s)), 60)
    return (
        f"[{bar}] iter {iteration}/{total}  reward {reward:.3f}  kl {kl:.4f}  "
        f"{tokens_per_second:,.0f} tok/s  eta {minutes}:{seconds:02d}"
    )
