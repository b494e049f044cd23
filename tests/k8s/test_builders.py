"""Child-object builders and the GPU inventory: pure functions, tested as data."""

from __future__ import annotations

import base64

import pytest
import yaml

from rlhf_operator.api import validate_object
from rlhf_operator.contract import launch
from rlhf_operator.contract.launch import WorkerSettings
from rlhf_operator.controlplane import exits
from rlhf_operator.coordinator_env import WORKER_HOSTS, CoordinatorSettings
from rlhf_operator.k8s import builders, names
from rlhf_operator.k8s.config import OperatorConfig
from rlhf_operator.k8s.inventory import capacity, node_gpus, product_matches
from rlhf_operator.k8s.merge import merge

from .conftest import gpu_job, local_job

REF = builders.JobRef("ppo", "team-a", "uid-1")
CONFIG = OperatorConfig(worker_image="w:1", coordinator_image="c:1", shm_size="16Gi")


def model(manifest):
    manifest = manifest | {"metadata": {**manifest["metadata"], "namespace": "team-a"}}
    job, errors = validate_object(manifest)
    assert job is not None and not errors, errors
    return job


def env_of(container):
    return {e["name"]: e["value"] for e in container["env"]}


def test_worker_pod_env_is_the_launch_contract_plus_nccl():
    job = model(gpu_job("ppo", gpus=16, gpus_per_node=8))
    topo = builders.topology_for(job)
    assert (topo.nodes, topo.per_node, topo.world_size, topo.gpu) == (2, 8, 16, True)
    pod = builders.build_worker_pod(REF, job, CONFIG, topo, node=1, attempt=2)
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "rlhf_worker.launcher"]
    env = env_of(container)
    # The pod's settings: its launcher starts ranks 8..15 with LOCAL_RANK 0..7.
    expected = WorkerSettings(
        job_id="ppo",
        coordinator_addr="ppo-coordinator-2.ppo.team-a.svc:50051",
        world_size=16,
        local_world_size=8,
        master_addr="ppo-worker-0-2.ppo.team-a.svc",
        master_port=29500,
        rank=8,
        local_rank=0,
        node_rank=1,
        device="cuda",
        token_file="/var/run/secrets/rlhf/token",
        socket_ifname="eth0",
        log_level="INFO",
    ).to_env()
    assert {k: env[k] for k in expected} == expected
    assert list(
        WorkerSettings.from_env({**env, "RLHF_TOKEN": "t", "RLHF_TOKEN_FILE": ""}).pod_ranks()
    ) == list(range(8, 16))
    assert env["NCCL_SOCKET_IFNAME"] == "eth0" and env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
    assert pod["metadata"]["labels"][names.LABEL_ATTEMPT] == "2"
    assert pod["metadata"]["annotations"][names.ANNOTATION_NODE] == "1"
    assert pod["metadata"]["name"] == "ppo-worker-1-2"
    assert pod["spec"]["hostname"] == "ppo-worker-1-2" and pod["spec"]["subdomain"] == "ppo"
    assert pod["spec"]["restartPolicy"] == "Never"


def test_a_worker_pod_holds_a_node_s_gpus_with_requests_sized_from_the_plan():
    job = model(gpu_job("ppo", gpus=8, gpus_per_node=8))
    topo = builders.topology_for(job)
    (pod,) = builders.build_worker_pods(REF, job, CONFIG, topo, 0, host_bytes_per_device=2 << 30)
    c = pod["spec"]["containers"][0]
    # 4 CPUs and 16 GiB per GPU, plus the 2 GiB per GPU the plan keeps in host memory.
    assert c["resources"] == {
        "requests": {"cpu": "32", "memory": "144Gi", "nvidia.com/gpu": "8"},
        "limits": {"memory": "144Gi", "nvidia.com/gpu": "8"},
    }
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    assert volumes["token"]["projected"]["sources"][0]["secret"]["name"] == "ppo-token"
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert mounts == {"/dev/shm": "dshm", "/var/run/secrets/rlhf": "token"}
    sc = pod["spec"]["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert c["ports"] == [{"name": "rendezvous", "containerPort": 29500}]
    assert "affinity" not in pod["spec"]  # one pod per node: nothing to keep together


def test_the_job_s_cpu_memory_and_rdma_requests():
    manifest = gpu_job("ppo", gpus=16, gpus_per_node=8)
    manifest["spec"]["resources"].update(
        cpuPerGpu="6500m",
        memoryPerGpu="40Gi",
        rdma={"resourceName": "rdma/rdma_shared_device_a", "count": 2},
    )
    job = model(manifest)
    pods = builders.build_worker_pods(REF, job, CONFIG, builders.topology_for(job), 0, 10 << 30)
    assert [p["metadata"]["name"] for p in pods] == ["ppo-worker-0-0", "ppo-worker-1-0"]
    c = pods[1]["spec"]["containers"][0]
    assert c["resources"] == {
        "requests": {
            "cpu": "52",
            "memory": "320Gi",
            "nvidia.com/gpu": "8",
            "rdma/rdma_shared_device_a": "2",
        },
        "limits": {"memory": "320Gi", "nvidia.com/gpu": "8", "rdma/rdma_shared_device_a": "2"},
    }
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["IPC_LOCK"]}
    # Every worker pod declares the rendezvous port (node 0's rank 0 listens): one shape.
    assert c["ports"] == pods[0]["spec"]["containers"][0]["ports"]


def test_local_mode_runs_every_slot_in_one_cpu_pod():
    job = model(local_job("ppo", slots=3))
    topo = builders.topology_for(job)
    (pod,) = builders.build_worker_pods(REF, job, CONFIG, topo, 0)
    assert pod["metadata"]["name"] == "ppo-worker-0-0"
    c = pod["spec"]["containers"][0]
    env = env_of(c)
    assert env[launch.DEVICE] == "cpu" and env[launch.LOCAL_WORLD_SIZE] == "3"
    assert env[launch.RANK] == "0" and env[launch.LOCAL_RANK] == "0"
    assert c["resources"] == {
        "requests": {"cpu": "3", "memory": "6Gi"},
        "limits": {"memory": "6Gi"},
    }
    assert "affinity" not in pod["spec"]


def test_user_placement_and_pod_template_are_merged():
    manifest = gpu_job("ppo", gpus=2, gpus_per_node=1)
    manifest["spec"]["resources"].update(
        {
            "nodeSelector": {"pool": "gpu"},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
            "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}},
            "podTemplate": {
                "metadata": {"labels": {"team": "a"}},
                "spec": {
                    "priorityClassName": "high",
                    "containers": [
                        {
                            "env": [
                                {"name": "NCCL_DEBUG", "value": "INFO"},
                                {"name": "X", "value": "1"},
                            ],
                            "volumeMounts": [{"name": "ckpt", "mountPath": "/ckpt"}],
                            "resources": {"limits": {"memory": "64Gi"}},
                        }
                    ],
                    "volumes": [{"name": "ckpt", "persistentVolumeClaim": {"claimName": "ckpt"}}],
                },
            },
        }
    )
    job = model(manifest)
    topo = builders.topology_for(job)
    pod = builders.build_worker_pod(REF, job, CONFIG, topo, 1, 0)
    spec = pod["spec"]
    assert spec["nodeSelector"] == {"pool": "gpu"}
    assert spec["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert spec["affinity"] == {
        "nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}
    }
    assert spec["priorityClassName"] == "high"
    assert (
        pod["metadata"]["labels"]["team"] == "a"
        and pod["metadata"]["labels"]["rlhf.dev/job"] == "ppo"
    )
    (c,) = spec["containers"]
    env = env_of(c)
    assert env["NCCL_DEBUG"] == "INFO" and env["X"] == "1" and env["RANK"] == "1"
    assert c["resources"]["limits"] == {"nvidia.com/gpu": "1", "memory": "64Gi"}
    assert c["resources"]["requests"] == {"nvidia.com/gpu": "1", "cpu": "4", "memory": "16Gi"}
    assert {m["name"] for m in c["volumeMounts"]} == {"dshm", "token", "ckpt"}
    assert {v["name"] for v in spec["volumes"]} == {"dshm", "token", "ckpt"}
    # The coordinator mounts the same checkpoint volume and goes where the job's pods
    # may go (its node selector and tolerations), but takes nothing GPU-side.
    coord = builders.build_coordinator_pod(REF, job, CONFIG, topo, 0)
    assert {v["name"] for v in coord["spec"]["volumes"]} == {"config", "token", "ckpt"}
    assert coord["spec"]["nodeSelector"] == {"pool": "gpu"}
    assert coord["spec"]["tolerations"] == spec["tolerations"]
    assert "priorityClassName" not in coord["spec"] and "affinity" not in coord["spec"]


def test_coordinator_pod_env_mounts_and_rbac():
    manifest = gpu_job("ppo", gpus=2, gpus_per_node=1)
    manifest["spec"]["resources"].update(
        imagePullSecrets=["registry"], coordinator={"cpu": "2", "memory": "4Gi"}
    )
    job = model(manifest)
    topo = builders.topology_for(job)
    pod = builders.build_coordinator_pod(REF, job, CONFIG, topo, 0)
    assert pod["metadata"]["name"] == "ppo-coordinator-0"
    assert pod["spec"]["imagePullSecrets"] == [{"name": "registry"}]
    c = pod["spec"]["containers"][0]
    assert c["command"] == ["python", "-m", "rlhf_operator.coordinator"]
    assert c["image"] == "c:1"
    env = env_of(c)
    settings = CoordinatorSettings(job_name="ppo", namespace="team-a", output_dir="/var/lib/rlhf")
    assert {k: env[k] for k in settings.to_env()} == settings.to_env()
    assert CoordinatorSettings.from_env(env) == settings
    assert env[WORKER_HOSTS] == "ppo-worker-0-0.ppo.team-a.svc,ppo-worker-1-0.ppo.team-a.svc"
    assert c["resources"] == {
        "requests": {"cpu": "2", "memory": "4Gi"},
        "limits": {"memory": "4Gi"},
    }
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert mounts == {"/etc/rlhf": "config", "/var/run/secrets/rlhf": "token"}
    assert pod["spec"]["serviceAccountName"] == "ppo-coordinator"
    sa, role, binding = builders.build_coordinator_rbac(REF, job)
    assert (sa["kind"], role["kind"], binding["kind"]) == ("ServiceAccount", "Role", "RoleBinding")
    assert sa["imagePullSecrets"] == [{"name": "registry"}]
    assert role["rules"] == [
        {
            "apiGroups": ["rlhf.dev"],
            "resources": ["rlhfjobs"],
            "resourceNames": ["ppo"],
            "verbs": ["get"],
        },
        {
            "apiGroups": ["rlhf.dev"],
            "resources": ["rlhfjobs/status"],
            "resourceNames": ["ppo"],
            "verbs": ["get", "patch"],
        },
    ]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "ppo-coordinator", "namespace": "team-a"}
    ]


def test_every_container_leaves_its_exit_reason_where_the_kubelet_reads_it():
    job = model(gpu_job("ppo", gpus=2, gpus_per_node=1))
    topo = builders.topology_for(job)
    pods = [
        builders.build_coordinator_pod(REF, job, CONFIG, topo, 0),
        builders.build_worker_pod(REF, job, CONFIG, topo, node=1, attempt=0),
    ]
    for pod in pods:
        (c,) = pod["spec"]["containers"]
        assert c["terminationMessagePath"] == "/dev/termination-log"
        assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
        assert env_of(c)[exits.TERMINATION_LOG_ENV] == c["terminationMessagePath"]


def test_config_map_secret_and_service():
    body = gpu_job("ppo") | {"status": {"phase": "Running"}}
    body["metadata"] = {
        "name": "ppo",
        "namespace": "team-a",
        "annotations": {"rlhf.dev/x": "1", "mine": "y"},
    }
    cm = builders.build_config_map(REF, builders.job_manifest_yaml(body), '{"version": 1}')
    job_yaml = yaml.safe_load(cm["data"]["job.yaml"])
    assert "status" not in job_yaml and job_yaml["metadata"]["annotations"] == {"mine": "y"}
    assert validate_object(job_yaml)[1] == []
    assert cm["data"]["plan.json"] == '{"version": 1}'
    secret = builders.build_secret(REF, "s3cret")
    assert base64.b64decode(secret["data"]["token"]).decode() == "s3cret"
    svc = builders.build_service(REF)
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {
        "app.kubernetes.io/managed-by": "rlhf-operator",
        "rlhf.dev/job": "ppo",
    }


@pytest.mark.parametrize(
    ("scheduling", "mode"),
    [
        ({}, "none"),
        ({"schedulerName": "volcano", "queue": "q"}, "volcano"),
        ({"schedulerName": "scheduler-plugins-scheduler"}, "coscheduling"),
        ({"queue": "team-queue"}, "kueue"),
    ],
)
def test_gang_scheduling(scheduling, mode):
    job = model(local_job("ppo", runPolicy={"scheduling": scheduling}))
    assert builders.scheduling_mode(job) == mode
    pod = builders.build_worker_pod(REF, job, CONFIG, builders.topology_for(job), 0, 0)
    group = builders.build_pod_group(REF, job, 2)
    if mode == "kueue":
        assert pod["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-queue"
        assert pod["metadata"]["labels"]["kueue.x-k8s.io/pod-group-name"] == "ppo-0"
        assert pod["metadata"]["annotations"]["kueue.x-k8s.io/pod-group-total-count"] == "2"
        assert "schedulingGates" not in pod["spec"]  # Kueue's webhook adds its gate
    if mode == "coscheduling":
        assert group["apiVersion"] == "scheduling.x-k8s.io/v1alpha1" and group["spec"] == {
            "minMember": 2
        }
        assert pod["metadata"]["labels"]["scheduling.x-k8s.io/pod-group"] == "ppo"
    if mode == "volcano":
        assert group["apiVersion"] == "scheduling.volcano.sh/v1beta1"
    if mode in ("none", "kueue"):
        assert group is None


def test_merge_rules():
    base = {
        "a": {"b": 1, "c": [1]},
        "containers": [{"name": "w", "env": [{"name": "A", "value": "1"}]}],
    }
    over = {
        "a": {"c": [2]},
        "containers": [{"name": "w", "env": [{"name": "A", "value": "2"}]}, {"name": "side"}],
    }
    out = merge(base, over)
    assert out == {
        "a": {"b": 1, "c": [2]},
        "containers": [{"name": "w", "env": [{"name": "A", "value": "2"}]}, {"name": "side"}],
    }
    assert base["a"]["c"] == [1]  # inputs untouched


def node(name, gpus, labels=None, taints=None, unschedulable=False, ready="True"):
    return node_gpus(
        {
            "metadata": {"name": name, "labels": labels or {}},
            "spec": {"taints": taints or [], "unschedulable": unschedulable},
            "status": {
                "allocatable": {"nvidia.com/gpu": str(gpus)},
                "conditions": [{"type": "Ready", "status": ready}],
            },
        }
    )


def test_inventory_counts_eligible_node_slots():
    manifest = gpu_job("ppo", gpus=16, gpus_per_node=8)
    manifest["spec"]["resources"]["nodeSelector"] = {"pool": "a"}
    manifest["spec"]["resources"]["tolerations"] = [{"key": "gpu", "operator": "Exists"}]
    job = model(manifest)
    nodes = [
        node("ok-16", 16, {"pool": "a", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}),
        node("tolerated", 8, {"pool": "a"}, [{"key": "gpu", "effect": "NoSchedule"}]),
        node("tainted", 8, {"pool": "a"}, [{"key": "other", "effect": "NoSchedule"}]),
        node("wrong-pool", 8, {"pool": "b"}),
        node("too-small", 4, {"pool": "a"}),
        node("cordoned", 8, {"pool": "a"}, unschedulable=True),
        node("lost", 8, {"pool": "a"}, ready="Unknown"),
        node("a100", 8, {"pool": "a", "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}),
    ]
    cap = capacity(job, nodes)
    assert cap.nodes == ("ok-16", "tolerated") and cap.available_slots == 3 and cap.enough
    cap = capacity(job, nodes[3:])
    assert not cap.enough and cap.missing_gpus == 16
    assert cap.message().endswith("16 GPUs missing")
    assert product_matches("A100-80GB", "NVIDIA-A100-SXM4-80GB")
    assert not product_matches("H100", "NVIDIA-A100-SXM4-80GB")
    assert node("x", "garbage").gpus == 0


def selects(selector: dict, labels: dict) -> bool:
    """A label selector's matchLabels as Kubernetes applies them."""
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


def test_the_network_policy_selects_exactly_the_job_s_pods():
    config = OperatorConfig(metrics_namespace="monitoring")
    job = model(gpu_job("ppo", gpus=16, gpus_per_node=8))
    other_ref = builders.JobRef("ppo-2", "team-a", "uid-2")
    topo = builders.topology_for(job)
    mine = builders.build_children(REF, job, config, topo, 0, "t")
    theirs = builders.build_children(other_ref, job, config, topo, 0, "t")
    (policy,) = [o for o in mine if o["kind"] == "NetworkPolicy"]
    spec = policy["spec"]
    pods = [o for o in mine if o["kind"] == "Pod"]
    others = [o for o in theirs if o["kind"] == "Pod"]
    assert len(pods) == 3 and all(
        selects(spec["podSelector"], p["metadata"]["labels"]) for p in pods
    )
    assert not any(selects(spec["podSelector"], p["metadata"]["labels"]) for p in others)
    assert spec["policyTypes"] == ["Ingress"]
    own, metrics = spec["ingress"]
    # From the job's own pods, on any port (NCCL picks its ports at run time)...
    (peer,) = own["from"]
    assert "ports" not in own and all(
        selects(peer["podSelector"], p["metadata"]["labels"]) for p in pods
    )
    assert not any(selects(peer["podSelector"], p["metadata"]["labels"]) for p in others)
    # ...and the coordinator's metrics from Prometheus's namespace only.
    assert metrics == {
        "from": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ],
        "ports": [{"protocol": "TCP", "port": 9090}],
    }
    unnamed = builders.build_network_policy(REF, OperatorConfig())
    assert len(unnamed["spec"]["ingress"]) == 1  # no metrics namespace: nothing else
    assert not any(
        o["kind"] == "NetworkPolicy"
        for o in builders.build_children(
            REF, job, OperatorConfig(network_policy=False), topo, 0, "t"
        )
    )


def test_each_pod_mounts_the_token_and_only_its_own_key():
    from rlhf_operator.controlplane import tls

    job = model(gpu_job("ppo", gpus=2, gpus_per_node=1))
    certs = tls.make_job_certificates("ppo")
    objects = builders.build_children(
        REF, job, CONFIG, builders.topology_for(job), 0, "t0k", certificates=certs
    )
    secrets = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Secret"}
    assert set(secrets["ppo-token"]["data"]) == {"token"}
    assert set(secrets["ppo-tls"]["data"]) == {
        "ca.crt",
        "coordinator.crt",
        "coordinator.key",
        "worker.crt",
        "worker.key",
    }
    assert base64.b64decode(secrets["ppo-tls"]["data"]["worker.key"]) == certs.worker_key
    for pod in (o for o in objects if o["kind"] == "Pod"):
        volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "token")
        keys = {i["key"] for src in volume["projected"]["sources"] for i in src["secret"]["items"]}
        env = env_of(pod["spec"]["containers"][0])
        assert env["RLHF_TLS_DIR"] == "/var/run/secrets/rlhf"
        if pod["metadata"]["labels"]["rlhf.dev/component"] == "coordinator":
            assert keys == {"token", "ca.crt", "coordinator.crt", "coordinator.key"}
        else:
            assert keys == {"token", "ca.crt", "worker.crt", "worker.key"}


def test_the_operator_s_identity_and_hardening_survive_the_template():
    manifest = gpu_job("ppo", gpus=1, gpus_per_node=1)
    manifest["spec"]["resources"]["podTemplate"] = {
        "metadata": {"labels": {"team": "a"}},
        "spec": {
            "containers": [
                {"name": "sidecar", "image": "busybox"},  # a container the operator never saw
                {"env": [{"name": "X", "value": "1"}]},
            ],
            "initContainers": [{"name": "fetch", "image": "busybox"}],
        },
    }
    job = model(manifest)
    pod = builders.build_worker_pod(REF, job, CONFIG, builders.topology_for(job), 0, 0)
    meta = pod["metadata"]
    assert (meta["name"], meta["namespace"]) == ("ppo-worker-0-0", "team-a")
    assert meta["labels"]["rlhf.dev/job"] == "ppo" and meta["labels"]["team"] == "a"
    assert meta["ownerReferences"][0]["uid"] == "uid-1"
    spec = pod["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    for c in spec["containers"] + spec["initContainers"]:
        assert c["securityContext"]["allowPrivilegeEscalation"] is False, c["name"]
        assert "ALL" in c["securityContext"]["capabilities"]["drop"], c["name"]
