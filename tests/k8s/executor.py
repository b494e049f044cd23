"""A kubelet for tests: runs every Pod the operator creates as a local process,
with that pod's command and environment, and reports its phase back.

What a pod would find in a cluster, and how it is played here:

- volumes: a ConfigMap or Secret volume becomes a directory holding its keys
  as files (Secret data decoded); emptyDir a fresh directory; any other volume
  (PVC, hostPath: the shared checkpoint storage) a directory shared by all the
  pods of the job;
- paths: every env value that is an absolute path is moved under the pod's
  mounts (a value under a mountPath points into that volume's directory) or,
  when no volume holds it, under a per-job directory standing for the image's
  filesystem, so /var/lib/rlhf means the same directory for every pod of a job;
- DNS: the pods' names through the headless Service (`pod.svc.ns.svc`,
  optionally `.cluster.local`) resolve to 127.0.0.1: any env value (or each
  comma-separated item of one) naming such a host is rewritten;
- ports: every pod has its own IP in a cluster, here all share 127.0.0.1, so
  each containerPort of a job's pods gets a free local port; `host:port`
  values and variables named `*_PORT` holding a declared port are rewritten;
- devices: a pod's GPUs become CPU slots (its launcher starts one process per
  GPU, as on a GPU node): RLHF_DEVICE=cpu, gloo/NCCL on `lo`,
  one thread per process;
- the API: processes get KUBECONFIG (the emulator), where a pod would use its
  ServiceAccount (in-cluster config);
- phases: Running once started; Succeeded or Failed with the exit code when
  the process ends, and the container's termination message (the file at its
  terminationMessagePath, a per-pod file here, or the end of the log, as
  FallbackToLogsOnError does); a deleted pod's process is terminated.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes.client.exceptions import ApiException

from .cluster import Cluster

JOB_LABEL = "rlhf.dev/job"
DNS = re.compile(r"^[a-z0-9-]+\.[a-z0-9-]+\.(?P<ns>[a-z0-9-]+)\.svc(\.cluster\.local)?$")


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningPod:
    namespace: str
    name: str
    uid: str
    process: subprocess.Popen[bytes]
    log: Path
    termination_log: Path
    logs_on_error: bool
    """terminationMessagePolicy FallbackToLogsOnError."""
    reported: str = "Running"


def termination_message(pod: RunningPod, code: int) -> str:
    """What a kubelet reports for a container with terminationMessagePolicy
    FallbackToLogsOnError: the termination-message file, or, when that is empty
    and the container failed, the end of its log (80 lines, 2048 bytes at most)."""
    path = pod.termination_log
    message = path.read_text(errors="replace") if path.exists() else ""
    if not message and code != 0 and pod.logs_on_error:
        message = "\n".join(pod.log.read_text(errors="replace").splitlines()[-80:])[-2048:]
    return message


@dataclass
class PodExecutor:
    cluster: Cluster
    root: Path
    workdir: Path
    """Working directory of every process (relative paths in job manifests)."""
    extra_env: dict[str, str] = field(default_factory=dict)
    replace_modules: dict[str, list[str]] = field(default_factory=dict)
    """`python -m MODULE` commands to run as another command (a test stand-in)."""
    pods: dict[tuple[str, str], RunningPod] = field(default_factory=dict)
    ports: dict[tuple[str, str, int], int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    # --- lifecycle ----------------------------------------------------------
    def start(self) -> PodExecutor:
        self._thread = threading.Thread(target=self._loop, name="executor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        for pod in list(self.pods.values()):
            self._terminate(pod)

    def kill(self, name: str, namespace: str = "default") -> None:
        """SIGKILL a pod's main process (as when its container dies): its worker
        processes die with it; the pod then reports Failed."""
        self.pods[(namespace, name)].process.send_signal(signal.SIGKILL)

    def kill_rank(self, name: str, rank: int, namespace: str = "default") -> None:
        """SIGKILL one worker process of a pod (a crashed rank): the pod's launcher
        stops the others and the pod reports Failed with that rank's reason."""
        launcher = self.pods[(namespace, name)].process.pid
        for pid in _children(launcher):
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if f"RANK={rank}".encode() in environ:
                os.kill(pid, signal.SIGKILL)
                return
        raise AssertionError(f"{name} runs no rank {rank}")

    def log_of(self, name: str, namespace: str = "default") -> str:
        pod = self.pods.get((namespace, name))
        return pod.log.read_text(errors="replace") if pod else ""

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            try:
                self._sync()
            except ApiException:
                continue

    def _sync(self) -> None:
        listed = {
            (p["metadata"]["namespace"], p["metadata"]["name"]): p for p in self.cluster.all_pods()
        }
        for key, pod in list(self.pods.items()):
            obj = listed.get(key)
            if (
                obj is None
                or obj["metadata"]["uid"] != pod.uid
                or obj["metadata"].get("deletionTimestamp")
            ):
                self._terminate(pod)
                del self.pods[key]
                continue
            code = pod.process.poll()
            if code is not None and pod.reported == "Running":
                pod.reported = "Succeeded" if code == 0 else "Failed"
                self.cluster.set_pod_phase(
                    pod.name,
                    pod.reported,
                    exit_code=code,
                    namespace=pod.namespace,
                    message=termination_message(pod, code),
                )
        for key, obj in listed.items():
            if key in self.pods or obj["metadata"].get("deletionTimestamp"):
                continue
            if (obj.get("status") or {}).get("phase"):
                continue  # finished before (a pod of an earlier executor run)
            self.pods[key] = self._run(obj)
            self.cluster.set_pod_phase(obj["metadata"]["name"], "Running", namespace=key[0])

    def _terminate(self, pod: RunningPod) -> None:
        """A deleted pod: SIGTERM to its main process, SIGKILL to all it left after 10 s
        (its process group stands for the container)."""
        if pod.process.poll() is None:
            pod.process.terminate()
            try:
                pod.process.wait(10)
            except subprocess.TimeoutExpired:
                pod.process.kill()
                pod.process.wait(10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pod.process.pid, signal.SIGKILL)

    # --- starting a pod --------------------------------------------------------
    def _run(self, pod: dict[str, Any]) -> RunningPod:
        meta, spec = pod["metadata"], pod["spec"]
        ns, name = meta["namespace"], meta["name"]
        job = (meta.get("labels") or {}).get(JOB_LABEL, name)
        pod_dir = self.root / ns / name / meta["uid"][:8]
        job_dir = self.root / ns / f"job-{job}"
        volumes = {
            v["name"]: self._volume(v, ns, pod_dir, job_dir) for v in spec.get("volumes") or []
        }
        (container,) = spec["containers"][:1]
        mounts = {m["mountPath"]: volumes[m["name"]] for m in container.get("volumeMounts") or []}
        termination_log = pod_dir / "termination-log"
        mounts[container.get("terminationMessagePath", "/dev/termination-log")] = termination_log
        self._declare_ports(ns, job)
        env = {
            e["name"]: self._rewrite(e["name"], e.get("value", ""), ns, job, mounts, job_dir)
            for e in container.get("env") or []
        }
        env.update(
            {
                "RLHF_DEVICE": "cpu",
                "GLOO_SOCKET_IFNAME": "lo",
                "NCCL_SOCKET_IFNAME": "lo",
                "OMP_NUM_THREADS": "1",
                "KUBECONFIG": str(self.cluster.kubeconfig),
                "PATH": os.environ.get("PATH", ""),
                "HOME": str(job_dir / "home"),
                **self.extra_env,
            }
        )
        command = list(container["command"]) + list(container.get("args") or [])
        if command[:2] == ["python", "-m"] and command[2] in self.replace_modules:
            command = self.replace_modules[command[2]] + command[3:]
        command = [sys.executable if c == "python" else c for c in command]
        pod_dir.mkdir(parents=True, exist_ok=True)
        (job_dir / "home").mkdir(parents=True, exist_ok=True)
        log = pod_dir / "log"
        with log.open("wb") as out:
            out.write(f"$ {shlex.join(command)}\n".encode())
            out.flush()
            process = subprocess.Popen(
                command,
                env=env,
                cwd=self.workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its process group: what the container holds
            )
        logs_on_error = container.get("terminationMessagePolicy") == "FallbackToLogsOnError"
        return RunningPod(ns, name, meta["uid"], process, log, termination_log, logs_on_error)

    def _volume(self, volume: dict[str, Any], ns: str, pod_dir: Path, job_dir: Path) -> Path:
        name = volume["name"]
        if {"configMap", "secret", "projected"} & set(volume):
            path = pod_dir / "volumes" / name
            path.mkdir(parents=True, exist_ok=True)
            # A projected volume is the union of its sources' files.
            sources = (volume.get("projected") or {}).get("sources") or [volume]
            for source in sources:
                for key, data in self._source_files(source, ns).items():
                    (path / key).write_bytes(data)
            return path
        # PVC, hostPath, NFS...: storage shared by the job's pods.
        path = (pod_dir if "emptyDir" in volume else job_dir) / "volumes" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _source_files(self, source: dict[str, Any], ns: str) -> dict[str, bytes]:
        """The files one ConfigMap or Secret source puts in a volume (its `items` only, if
        it lists some)."""
        if "configMap" in source:
            spec = source["configMap"]
            obj = self.cluster.get(f"/api/v1/namespaces/{ns}/configmaps/{spec['name']}")
            files = {k: v.encode() for k, v in ((obj or {}).get("data") or {}).items()}
        elif "secret" in source:
            spec = source["secret"]
            secret = spec.get("secretName") or spec.get("name")
            obj = self.cluster.get(f"/api/v1/namespaces/{ns}/secrets/{secret}")
            files = {k: base64.b64decode(v) for k, v in ((obj or {}).get("data") or {}).items()}
        else:
            return {}
        items = spec.get("items")
        if items:
            files = {i["path"]: files[i["key"]] for i in items if i["key"] in files}
        return files

    def _declare_ports(self, ns: str, job: str) -> None:
        for pod in self.cluster.pods(job, ns):
            for c in pod["spec"].get("containers") or []:
                for p in c.get("ports") or []:
                    self._port(ns, job, int(p["containerPort"]))

    def _port(self, ns: str, job: str, port: int) -> int:
        """The local port standing for `port` on the job's pods (one per job and port)."""
        return self.ports.setdefault((ns, job, port), free_port())

    def _rewrite(
        self, var: str, value: str, ns: str, job: str, mounts: dict[str, Path], job_dir: Path
    ) -> str:
        if value.startswith("/"):
            for mount in sorted(mounts, key=len, reverse=True):
                if value == mount or value.startswith(mount.rstrip("/") + "/"):
                    return str(mounts[mount]) + value[len(mount.rstrip("/")) :]
            return str(job_dir / "fs") + value
        if var.endswith("_PORT") and value.isdigit():
            return str(self._port(ns, job, int(value)))
        return ",".join(self._rewrite_host(item, ns, job) for item in value.split(","))

    def _rewrite_host(self, item: str, ns: str, job: str) -> str:
        host, sep, port = item.rpartition(":") if ":" in item else (item, "", "")
        if not DNS.match(host):
            return item
        if sep and port.isdigit():
            return f"127.0.0.1:{self._port(ns, job, int(port))}"
        return "127.0.0.1"
