"""The Helm chart: CRD, lint, install into the emulator, least-privilege RBAC
(checked against the requests the real operator makes), and a dashboard that
queries only metrics the code exports."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

from rlhf_operator import metrics_names
from rlhf_operator.api import validate_object
from rlhf_operator.api.pod_policy import PodPolicy
from rlhf_operator.k8s import builders, metrics
from rlhf_operator.k8s.config import OperatorConfig
from rlhf_operator.k8s.merge import merge

from . import helm
from .cluster import NAMESPACE, TEST_USER_AGENT, Cluster, wait_for
from .conftest import local_job

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "rlhf-operator"
needs_helm = pytest.mark.skipif(not helm.available(), reason="helm-sdkpy is not installed")


def test_chart_ships_the_generated_crd_unchanged():
    shipped = (CHART / "crds" / "rlhf.dev_rlhfjobs.yaml").read_bytes()
    generated = (ROOT / "crds" / "rlhf.dev_rlhfjobs.yaml").read_bytes()
    assert shipped == generated, "copy crds/rlhf.dev_rlhfjobs.yaml into charts/rlhf-operator/crds/"


@needs_helm
def test_chart_lints_without_warnings():
    result = helm.run("lint", str(CHART))
    assert result["TotalChartsLinted"] == 1 and not result["Errors"]
    # Helm's severities: 1 info, 2 warning, 3 error.
    assert [m for m in result["Messages"] if m["Severity"] >= 2] == []


def install(cluster: Cluster, values: dict[str, Any]) -> list[dict[str, Any]]:
    result = helm.run(
        "install", str(CHART), str(cluster.kubeconfig), "rlhf-system", json.dumps(values)
    )
    return [d for d in yaml.safe_load_all(result["manifest"]) if d]


def rules_of(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for d in docs if d["kind"] == kind for r in d["rules"]]


@needs_helm
def test_chart_installs_into_the_emulator(cluster):
    docs = install(cluster, {})
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        [
            "ClusterRole",
            "ClusterRole",
            "ClusterRoleBinding",
            "ClusterRoleBinding",
            "ConfigMap",
            "Deployment",
            "Service",
            "ServiceAccount",
        ]
    )
    deployment = cluster.get("/apis/apps/v1/namespaces/rlhf-system/deployments/rlhf-rlhf-operator")
    assert deployment is not None
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    container = spec["template"]["spec"]["containers"][0]
    assert container["args"] == ["operator"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["RLHF_OPERATOR_NAMESPACES"] == "" and env["RLHF_OPERATOR_LOG_LEVEL"] == "INFO"
    settings = OperatorConfig.from_env(env)  # the names the operator reads
    assert (settings.resync_seconds, settings.failure_settle_seconds) == (10.0, 5.0)
    assert settings.pod_policy == PodPolicy()  # the chart's defaults are the operator's
    assert settings.network_policy is True and settings.metrics_namespace == "monitoring"
    assert spec["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    dashboard = cluster.get(
        "/api/v1/namespaces/rlhf-system/configmaps/rlhf-rlhf-operator-dashboard"
    )
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    json.loads(dashboard["data"]["rlhf-operator.json"])


@needs_helm
def test_chart_namespaced_install_uses_roles_in_the_watched_namespaces(cluster):
    docs = install(
        cluster,
        {
            "watchNamespaces": ["team-a", "team-b"],
            "metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}},
        },
    )
    roles = [d for d in docs if d["kind"] == "Role"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    cluster_rules = rules_of(docs, "ClusterRole")
    assert cluster_rules == [  # cluster-scoped reads only: the inventory and the queue's order
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch"]},
        {
            "apiGroups": ["scheduling.k8s.io"],
            "resources": ["priorityclasses"],
            "verbs": ["list", "watch"],
        },
    ]
    assert any(d["kind"] == "ServiceMonitor" for d in docs)
    (monitor,) = [d for d in docs if d["kind"] == "PodMonitor"]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}
    env = {
        e["name"]: e["value"]
        for d in docs
        if d["kind"] == "Deployment"
        for e in d["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["RLHF_OPERATOR_NAMESPACES"] == "team-a,team-b"


VERBS = {"POST": "create", "PATCH": "patch", "DELETE": "delete", "PUT": "update"}


def used_permissions(cluster: Cluster) -> set[tuple[str, str, str]]:
    """(apiGroup, resource[/subresource], verb) of every request the operator made."""
    used = set()
    for r in cluster.emulator.requests():
        if r.resource is None or r.headers.get("User-Agent") == TEST_USER_AGENT:
            continue
        if r.resource.plural is None:
            continue  # discovery
        method = str(getattr(r.method, "value", r.method)).upper()
        if method == "GET":
            verb = "watch" if r.params.get("watch") else ("get" if r.name else "list")
        else:
            verb = VERBS[method]
        resource = r.resource.plural + (f"/{r.subresource}" if r.subresource else "")
        used.add((r.resource.group or "", resource, verb))
    return used


def granted_permissions(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {
        (g, res, v)
        for rule in rules
        for g in rule["apiGroups"]
        for res in rule["resources"]
        for v in rule["verbs"]
    }


def exercise_every_code_path(cluster: Cluster) -> None:
    """Jobs that make the operator use every call it has."""
    bad = local_job("bad")
    bad["spec"]["data"]["batchSize"] = 0
    cluster.apply_job(bad)
    cluster.apply_job(local_job("volcano", runPolicy={"scheduling": {"schedulerName": "volcano"}}))
    cluster.apply_job(
        local_job(
            "plugins",
            runPolicy={
                "scheduling": {"schedulerName": "scheduler-plugins"},
                "ttlSecondsAfterFinished": 0,
                "backoffLimit": 1,
            },
        )
    )
    wait_for(lambda: cluster.status("plugins").get("phase") == "Running", "plugins to run")
    cluster.set_pod_phase("plugins-worker-0-0", "Failed", exit_code=1)
    wait_for(lambda: cluster.status("plugins").get("restarts") == 1, "a restart")
    wait_for(lambda: cluster.status("plugins").get("phase") == "Running", "plugins to run again")
    cluster.set_pod_phase("plugins-coordinator-1", "Succeeded")
    wait_for(lambda: cluster.job("plugins") is None, "the ttl to delete the job")
    wait_for(lambda: cluster.status("bad").get("phase") == "Failed", "the bad job to fail")
    wait_for(lambda: cluster.status("volcano").get("phase") == "Running", "volcano to run")
    cluster.apply_job(local_job("kueue", runPolicy={"scheduling": {"queue": "team-a"}}))
    wait_for(lambda: cluster.status("kueue").get("phase") == "Running", "kueue to run")
    cluster.set_pod_phase("kueue-coordinator-0", "Succeeded")  # its pods: not retriable
    wait_for(lambda: cluster.status("kueue").get("phase") == "Succeeded", "kueue to finish")
    cluster.patch_job("volcano", {"spec": {"training": {"iterations": 99}}})  # refused
    wait_for(lambda: cluster.condition("volcano", "SpecAccepted"), "the edit to be refused")


@needs_helm
def test_chart_rbac_is_exactly_what_the_operator_uses(cluster, operator, kubelet):
    exercise_every_code_path(cluster)
    used = used_permissions(cluster)
    docs = install(cluster, {})
    granted = granted_permissions(rules_of(docs, "ClusterRole"))
    # The coordinator's per-job Role grants these; RBAC lets the operator create
    # it only when the operator holds them itself.
    job, _ = validate_object(local_job("x") | {"metadata": {"name": "x", "namespace": NAMESPACE}})
    assert job is not None
    (_, role, _) = builders.build_coordinator_rbac(builders.JobRef("x", NAMESPACE, "u"), job)
    delegated = granted_permissions(role["rules"])
    assert used <= granted, f"missing from the chart: {sorted(used - granted)}"
    assert granted - delegated <= used, (
        f"granted but never used: {sorted(granted - delegated - used)}"
    )


DASHBOARD = CHART / "dashboards" / "rlhf-operator.json"


def dashboard_metrics() -> set[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    return {m for e in exprs for m in re.findall(r"\brlhf_[a-z0-9_]+", e)}


def test_dashboard_queries_only_metrics_the_code_names():
    found = dashboard_metrics()
    assert found and found <= metrics_names.exported_series(), (
        found - metrics_names.exported_series()
    )
    # Every metric is on the dashboard.
    bases = {re.sub(r"_(bucket|sum|count)$", "", m) for m in found}
    assert set(metrics_names.OPERATOR_METRICS) | set(metrics_names.JOB_METRICS) <= bases


def registered_families(registry=REGISTRY) -> set[str]:
    names = set()
    for family in registry.collect():
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
    return names


def test_operator_exports_every_operator_metric():
    assert set(metrics_names.OPERATOR_METRICS) <= registered_families()


def test_coordinator_exports_every_job_metric():
    from rlhf_operator.coordinator.job_metrics import JobMetrics

    # Each job's coordinator keeps its metrics in its own registry.
    assert set(metrics_names.JOB_METRICS) <= registered_families(JobMetrics("j").registry)


@needs_helm
@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"resyncSeconds": "banana"}, "resyncSeconds"),
        ({"logLevel": "LOUD"}, "logLevel"),
        ({"podPolicy": {"allowRoot": "sometimes"}}, "podPolicy.allowRoot"),
        ({"metrics": {"port": 0}}, "metrics.port"),
        ({"resyncSecond": 5}, "resyncSecond"),  # a typo is not silently ignored
    ],
)
def test_bad_values_fail_install_and_lint_naming_the_field(cluster, tmp_path, values, field):
    with pytest.raises(AssertionError, match=re.escape(field.replace(".", "/"))) as failure:
        install(cluster, values)
    assert "values don't meet the specifications of the schema" in str(failure.value)
    # Lint reads the chart's own values.yaml: a copy with the bad value fails it too.
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    merged = merge(yaml.safe_load((CHART / "values.yaml").read_text()), values)
    (chart / "values.yaml").write_text(yaml.safe_dump(merged))
    result = helm.run("lint", str(chart))
    # (The Python binding drops lint's error texts; install above shows the field named.)
    assert result["Errors"] and any(
        m["Severity"] == 3 and m["Path"] == "values.yaml" for m in result["Messages"]
    ), result


# What the Prometheus Operator puts on every series a PodMonitor or ServiceMonitor
# scrapes (its generated relabelling); a series' own label of one of these names would
# be renamed exported_<name>.
TARGET_LABELS = {"namespace", "pod", "container", "endpoint", "job", "instance", "service"}


def scraped_labels(registry: Any) -> dict[str, set[str]]:
    """Each series' label names after the scrape: its own, plus the target's."""
    out: dict[str, set[str]] = {}
    for family in registry.collect():
        for sample in family.samples:
            own = set(sample.labels)
            assert not own & TARGET_LABELS, f"{sample.name}: {own & TARGET_LABELS} would be renamed"
            out.setdefault(sample.name, set()).update(own | TARGET_LABELS)
    return out


def query_labels(expr: str) -> set[str]:
    """Label names a PromQL expression groups or matches by."""
    names: set[str] = set()
    for group in re.findall(r"\bby \(([^)]*)\)", expr):
        names |= {n.strip() for n in group.split(",") if n.strip()}
    for matchers in re.findall(r"\{([^}]*)\}", expr):
        names |= set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", matchers))
    names |= set(re.findall(r"label_values\([^,]*,\s*(\w+)\)", expr))
    return names


def test_dashboard_queries_use_the_labels_the_scraped_series_carry():
    from rlhf_operator.coordinator.job_metrics import JobMetrics
    from rlhf_operator.coordinator.outputs import CallTiming, IterationRecord

    job = JobMetrics("ppo")
    record = IterationRecord(3, 0.5, 0.1, 2.0, 100.0, 4.0, {"actor_gen": CallTiming(1.0)})
    job.observe(record)
    metrics.record_phase("uid", "Running")  # the operator's gauge has a sample
    series = scraped_labels(job.registry) | scraped_labels(REGISTRY)
    dash = json.loads(DASHBOARD.read_text())
    targets = [t for p in dash["panels"] for t in p["targets"]]
    variables = [v for v in dash["templating"]["list"] if v["type"] == "query"]
    checked = 0
    for text, legend in [(t["expr"], t.get("legendFormat", "")) for t in targets] + [
        (v["query"]["query"], "") for v in variables
    ]:
        used = query_labels(text) | set(re.findall(r"\{\{(\w+)\}\}", legend))
        for name in re.findall(r"\brlhf_[a-z0-9_]+", text):
            assert name in series, f"{name}: no such series"
            assert used <= series[name], f"{text}: {used - series[name]} not on {name}"
            checked += 1
    assert checked >= len(targets)
    # One series per job: every job panel splits by namespace and rlhfjob.
    for t in targets:
        if "rlhf_job_" in t["expr"]:
            assert {"namespace", "rlhfjob"} <= query_labels(t["expr"]), t["expr"]
