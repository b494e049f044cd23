"""`rlhfctl manifests`: the objects the operator would create, printed for review."""

from __future__ import annotations

from pathlib import Path

import yaml

from rlhf_operator.cli.main import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def documents(capsys, *argv: str) -> list[dict]:
    assert main(["manifests", *argv]) == 0
    return list(yaml.safe_load_all(capsys.readouterr().out))


def pods(docs: list[dict], component: str) -> list[dict]:
    return [
        d
        for d in docs
        if d["kind"] == "Pod" and d["metadata"]["labels"]["rlhf.dev/component"] == component
    ]


def test_the_70b_example_is_eight_pods_of_eight_gpus_beside_the_coordinator(capsys):
    docs = documents(capsys, str(EXAMPLES / "llama70b-ppo-64gpu.yaml"))
    kinds = [d["kind"] for d in docs]
    assert kinds[0] == "ConfigMap" and "plan.json" in docs[0]["data"]
    assert {"Secret", "Service", "ServiceAccount", "Role", "RoleBinding"} <= set(kinds)
    (coordinator,) = pods(docs, "coordinator")
    workers = pods(docs, "worker")
    assert [w["metadata"]["name"] for w in workers] == [
        f"llama70b-ppo-worker-{n}-0" for n in range(8)
    ]
    for n, pod in enumerate(workers):
        (c,) = pod["spec"]["containers"]
        assert c["command"] == ["python", "-m", "rlhf_worker.launcher"]
        requests = c["resources"]["requests"]
        assert requests["nvidia.com/gpu"] == "8" and requests["cpu"] and requests["memory"]
        env = {e["name"]: e["value"] for e in c["env"]}
        assert (env["RANK"], env["LOCAL_WORLD_SIZE"], env["WORLD_SIZE"]) == (str(8 * n), "8", "64")
        shm = next(v for v in pod["spec"]["volumes"] if v["name"] == "dshm")
        assert shm["emptyDir"]["medium"] == "Memory"
        assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    assert "nvidia.com/gpu" not in coordinator["spec"]["containers"][0]["resources"]["requests"]


def kueue_shape(pod: dict) -> str:
    """What Kueue tells a pod group's PodSets apart by (its plain-pod KEP's list): labels
    but its own, containers' images, requests and ports, and the scheduling fields."""
    spec = pod["spec"]
    shape = {
        "labels": {
            k: v
            for k, v in pod["metadata"]["labels"].items()
            if not k.startswith("kueue.x-k8s.io/")
        },
        "containers": [
            (c["image"], c.get("resources", {}).get("requests"), c.get("ports"))
            for c in spec["containers"]
        ],
        **{
            k: spec.get(k)
            for k in ("nodeSelector", "affinity", "tolerations", "priorityClassName", "overhead")
        },
    }
    return yaml.safe_dump(shape, sort_keys=True)


def test_a_kueue_job_is_one_pod_group_counting_its_pods(capsys, tmp_path):
    job = yaml.safe_load((EXAMPLES / "llama70b-ppo-64gpu.yaml").read_text())
    job["spec"]["runPolicy"]["scheduling"] = {"queue": "team-a"}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    docs = documents(capsys, str(path))
    all_pods = [d for d in docs if d["kind"] == "Pod"]
    assert len(all_pods) == 9  # the coordinator and 8 nodes of 8 GPUs
    for pod in all_pods:
        labels, annotations = pod["metadata"]["labels"], pod["metadata"]["annotations"]
        assert labels["kueue.x-k8s.io/queue-name"] == "team-a"
        assert labels["kueue.x-k8s.io/pod-group-name"] == f"{job['metadata']['name']}-0"
        assert annotations["kueue.x-k8s.io/pod-group-total-count"] == "9"
        assert "schedulingGates" not in pod["spec"]
    # Two PodSets in Kueue's Workload (coordinator, workers), far within its limit of 8.
    assert len({kueue_shape(p) for p in all_pods}) == 2
    assert not any(d["kind"] == "PodGroup" for d in docs)


def test_devices_from_the_command_line_are_checked_as_the_spec_is(capsys):
    assert main(["manifests", str(EXAMPLES / "llama7b-ppo-8gpu.yaml"), "--gpus", "12"]) == 1
    err = capsys.readouterr().err
    assert "gpus must be at most gpusPerNode or a multiple of it" in err
    assert "Traceback" not in err
