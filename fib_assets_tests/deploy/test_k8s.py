"""The Kubernetes profile without a cluster: the step Jobs dagster-k8s would create (built with
its own job construction), the instance YAML against Dagster's config schema, the Helm values
against that instance, and the raw manifests against the Kubernetes schemas."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import dagster as dg
import kubernetes
import kubernetes_validate
import pytest
import yaml

from fib_assets.defs import deployment as dep

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
K8S_VERSION = "1.33.0"  # oldest minor still in standard support on EKS/GKE/AKS at writing

INSTANCE_ENV = {
    "DAGSTER_K8S_SERVICE_ACCOUNT": "dagster",
    "DAGSTER_K8S_JOB_NAMESPACE": "fib-assets",
    "FIB_ASSETS_LOG_BUCKET": "fib-assets-logs",
    "DAGSTER_PG_HOST": "db.example.internal",
    "DAGSTER_PG_PORT": "5432",
    "DAGSTER_PG_DB": "dagster",
    "DAGSTER_PG_USERNAME": "dagster",
    "DAGSTER_PG_PASSWORD": "not-a-secret",
}


def _validate(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def _instance_config(tmp_path: Path) -> dict[str, Any]:
    from dagster._core.instance.config import dagster_instance_config

    (tmp_path / "dagster.yaml").write_text(dep.K8S_INSTANCE_YAML.read_text())
    config, custom_class = dagster_instance_config(str(tmp_path))
    assert custom_class is None
    return dict(config)


def _section_config(section: dict[str, Any]) -> tuple[type, dict[str, Any]]:
    """(class, processed config) of one configurable-class section of dagster.yaml."""
    from dagster._config import process_config
    from dagster._serdes import class_from_code_pointer

    klass = class_from_code_pointer(section["module"], section["class"])
    result = process_config(klass.config_type(), section["config"])
    assert result.success, result.errors
    return klass, dict(result.value)


# --- profile selection ---------------------------------------------------------------------------


def test_profile_comes_from_the_environment_and_defaults_to_local():
    assert dep.deployment_profile({}) == "local"
    assert dep.deployment_profile({"FIB_ASSETS_DEPLOYMENT": ""}) == "local"
    assert dep.deployment_profile({"FIB_ASSETS_DEPLOYMENT": " K8s "}) == "k8s"
    with pytest.raises(ValueError, match="FIB_ASSETS_DEPLOYMENT='prod'.*local, k8s"):
        dep.deployment_profile({"FIB_ASSETS_DEPLOYMENT": "prod"})


def test_local_profile_is_the_embedded_default():
    assert dep.executor_for("local") is dg.multi_or_in_process_executor
    res = dep.resources_for("local")
    assert set(res) == {"storage", "qc_thresholds"}
    assert not res["storage"].is_remote


def test_k8s_profile_loads_with_the_k8s_executor_and_env_configured_storage(monkeypatch):
    from dagster._config import Shape, process_config
    from dagster_k8s.executor import _K8S_EXECUTOR_CONFIG_SCHEMA

    from fib_assets.defs import acquisitions, benchmarks, formats

    assert process_config(Shape(_K8S_EXECUTOR_CONFIG_SCHEMA), dep.K8S_EXECUTOR_CONFIG).success
    executor = dep.executor_for("k8s")
    assert executor.name == "k8s_job_executor"
    # the wiring definitions.py uses, with the k8s profile
    defs = dg.Definitions.merge(
        acquisitions.defs,
        formats.defs,
        benchmarks.defs,
        dg.Definitions(resources=dep.resources_for("k8s"), executor=executor),
    )
    # a fresh instance: loading consults the current instance's defs-state storage, and a test
    # elsewhere in the suite can leave a stale one behind
    with dg.instance_for_test():
        dg.Definitions.validate_loadable(defs)
    assert defs.executor is executor
    # the storage root is read at run time from the pod's environment: an s3:// URL
    monkeypatch.setenv("FIB_ASSETS_STORAGE_ROOT", "s3://fib-assets-data/storage")
    monkeypatch.setenv("FIB_ASSETS_LANDING_ZONE", "/landing")
    resolved = dep.resources_for("k8s")["storage"].process_config_and_initialize()
    assert resolved.root == "s3://fib-assets-data/storage" and resolved.is_remote
    assert resolved.asset_url("raw_volume", "r001") == (
        "s3://fib-assets-data/storage/raw_volume/r001"
    )


# --- the step Jobs dagster-k8s creates ------------------------------------------------------------


@pytest.fixture()
def run_launcher(tmp_path, monkeypatch):
    """The K8sRunLauncher of k8s/dagster.yaml, pointed at a kubeconfig that is never contacted
    (building Jobs makes no API call)."""
    from dagster_k8s import K8sRunLauncher

    for key, value in INSTANCE_ENV.items():
        monkeypatch.setenv(key, value)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "t", "cluster": {"server": "https://127.0.0.1:6443"}}],
                "users": [{"name": "t", "user": {"token": "t"}}],
                "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t"}}],
                "current-context": "t",
            }
        )
    )
    klass, config = _section_config(_instance_config(tmp_path)["run_launcher"])
    assert klass is K8sRunLauncher
    config.update(load_incluster_config=False, kubeconfig_file=str(kubeconfig))
    return K8sRunLauncher(**config)


def _step_job(asset: dg.AssetsDefinition, launcher, image: str = "registry/fib-assets:cpu"):
    """The Job ``k8s_job_executor`` (configured by K8S_EXECUTOR_CONFIG) would create for the
    step of ``asset``: the same merge order as ``K8sStepHandler`` — run launcher, executor
    config, the op's ``dagster-k8s/config`` tag — then dagster-k8s's own job construction."""
    from dagster._core.storage.dagster_run import DagsterRun
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import (
        UserDefinedDagsterK8sConfig,
        construct_dagster_k8s_job,
        get_k8s_job_name,
        get_user_defined_k8s_config,
    )

    cfg = dep.K8S_EXECUTOR_CONFIG
    run = DagsterRun(job_name="__ASSET_JOB", run_id="0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")
    context = K8sContainerContext.create_for_run(run, launcher, include_run_tags=False)
    context = context.merge(
        K8sContainerContext(
            run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(cfg.get("step_k8s_config", {}))
        )
    )
    step_key = asset.op.name
    op_config = get_user_defined_k8s_config(asset.op.tags)
    context = context.merge(K8sContainerContext(run_k8s_config=op_config))
    job_name = f"dagster-step-{get_k8s_job_name(run.run_id, step_key)}"
    job = construct_dagster_k8s_job(
        job_config=context.get_k8s_job_config(image, launcher),
        args=["dagster", "api", "execute_step"],
        job_name=job_name,
        pod_name=job_name,
        component="step_worker",
        user_defined_k8s_config=context.run_k8s_config,
        labels={"dagster/job": run.job_name, "dagster/op": step_key, "dagster/run-id": run.run_id},
        env_vars=[{"name": "DAGSTER_RUN_STEP_KEY", "value": step_key}],
    )
    return kubernetes.client.ApiClient().sanitize_for_serialization(job)


@dg.asset(pool=dep.GPU_POOL, op_tags=dep.gpu_op_tags(gpus=2, memory="64Gi", image="reg/fib:cuda"))
def segmentation_model() -> None:
    """A stand-in GPU asset (training assets use exactly these tags)."""


@dg.asset
def cpu_only() -> None:
    """A stand-in CPU asset (no tags: the executor's defaults)."""


def test_gpu_step_pod_requests_gpus_on_the_tainted_gpu_pool(run_launcher):
    assert segmentation_model.op.pool == dep.GPU_POOL
    job = _step_job(segmentation_model, run_launcher)
    _validate(job)  # a Job the API server accepts (strict: no unknown fields)
    assert job["kind"] == "Job" and job["apiVersion"] == "batch/v1"
    spec = job["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    limits = container["resources"]["limits"]
    assert (limits["nvidia.com/gpu"], limits["memory"]) == ("2", "64Gi")  # + the step defaults
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "2"
    assert container["resources"]["requests"]["cpu"] == "8"
    assert container["image"] == "reg/fib:cuda"  # the CUDA image, only for this step
    assert pod["nodeSelector"] == {dep.NODE_POOL_LABEL: "gpu"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert pod["priorityClassName"] == dep.GPU_PRIORITY_CLASS
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in pod["volumes"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    # inherited from the run launcher and the executor's step defaults
    assert pod["serviceAccountName"] == "dagster"
    assert {"configMapRef": {"name": "fib-assets-env"}} in container["envFrom"]
    assert {"secretRef": {"name": "fib-assets-figshare"}} in container["envFrom"]
    assert spec["activeDeadlineSeconds"] == dep.STEP_DEADLINE_S
    assert spec["backoffLimit"] == 0
    assert job["metadata"]["labels"]["dagster/op"] == "segmentation_model"
    # the tolerated taint is exactly the GPU pool's taint in the manifests
    (node,) = _manifests()["reference/gpu-node.yaml"]
    (taint,) = node["spec"]["taints"]
    assert taint == dep.GPU_TAINT
    assert taint["key"] == pod["tolerations"][0]["key"]
    assert node["metadata"]["labels"][dep.NODE_POOL_LABEL] == "gpu"


def test_cpu_step_pod_stays_on_the_cpu_pool_without_gpus(run_launcher):
    job = _step_job(cpu_only, run_launcher)
    _validate(job)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["nodeSelector"] == {dep.NODE_POOL_LABEL: "cpu"}
    assert "tolerations" not in pod or not pod["tolerations"]
    assert "nvidia.com/gpu" not in json.dumps(container["resources"])
    assert container["resources"]["requests"]["cpu"] == "2"
    assert container["image"] == "registry/fib-assets:cpu"


def test_gpu_tags_validate_their_arguments(monkeypatch):
    with pytest.raises(ValueError, match="gpus"):
        dep.gpu_op_tags(gpus=0)
    with pytest.raises(ValueError, match="quantity"):
        dep.gpu_op_tags(memory="32 GB")
    monkeypatch.delenv(dep.GPU_IMAGE_ENV, raising=False)
    assert "image" not in dep.gpu_op_tags()["dagster-k8s/config"]["container_config"]
    monkeypatch.setenv(dep.GPU_IMAGE_ENV, "reg/fib:cuda")
    assert dep.gpu_op_tags()["dagster-k8s/config"]["container_config"]["image"] == "reg/fib:cuda"


# --- instance YAML, Helm values, manifests --------------------------------------------------------


def test_k8s_instance_yaml_loads_against_dagsters_config_schema(tmp_path, monkeypatch):
    from dagster._config import process_config
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster._core.storage.config import pg_config
    from dagster_aws.s3 import S3ComputeLogManager
    from dagster_k8s import K8sRunLauncher

    for key, value in INSTANCE_ENV.items():
        monkeypatch.setenv(key, value)
    config = _instance_config(tmp_path)
    assert _section_config(config["run_launcher"])[0] is K8sRunLauncher
    assert _section_config(config["compute_logs"])[0] is S3ComputeLogManager
    assert _section_config(config["run_coordinator"])[0] is QueuedRunCoordinator
    pg = process_config(pg_config(), config["storage"]["postgres"])
    assert pg.success, pg.errors
    assert pg.value["postgres_db"]["hostname"] == "db.example.internal"
    assert config["concurrency"]["pools"]["default_limit"] >= 1
    # the S3 compute log manager can be built from it (no request is made)
    _, logs = _section_config(config["compute_logs"])
    assert logs["bucket"] == "fib-assets-logs"
    # secrets are never in the file, only references to the environment
    text = dep.K8S_INSTANCE_YAML.read_text()
    assert "not-a-secret" not in text and "password:\n        env:" in text


def _manifests() -> dict[str, list[dict[str, Any]]]:
    root = K8S / "manifests"
    return {
        p.relative_to(root).as_posix(): [d for d in yaml.safe_load_all(p.read_text()) if d]
        for p in sorted(root.rglob("*.yaml"))
    }


def test_raw_manifests_validate_against_the_kubernetes_schemas():
    manifests = _manifests()
    kinds = {(name, d["kind"]) for name, docs in manifests.items() for d in docs}
    assert {
        ("rbac.yaml", "Role"),
        ("rbac.yaml", "RoleBinding"),
        ("rbac.yaml", "ServiceAccount"),
        ("storage.yaml", "StorageClass"),
        ("gpu-node-pool.yaml", "ResourceQuota"),
        ("gpu-node-pool.yaml", "PriorityClass"),
        ("reference/gpu-node.yaml", "Node"),
    } <= kinds
    for name, docs in manifests.items():
        for doc in docs:
            try:
                _validate(doc)
            except kubernetes_validate.ValidationError as err:  # pragma: no cover - message
                pytest.fail(f"k8s/manifests/{name}: {doc['kind']}: {err}")
    # `kubectl apply -f k8s/manifests/` (not recursive) never creates a Node
    assert all(d["kind"] != "Node" for n, docs in manifests.items() if "/" not in n for d in docs)
    (priority,) = [d for d in manifests["gpu-node-pool.yaml"] if d["kind"] == "PriorityClass"]
    assert priority["metadata"]["name"] == dep.GPU_PRIORITY_CLASS
    # the validator is strict: an unknown field is an error, not silently ignored
    bad = copy.deepcopy(manifests["storage.yaml"][-1])
    bad["spec"]["storageClass"] = bad["spec"].pop("storageClassName")
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(bad)


def test_rbac_lets_the_run_launcher_manage_jobs_and_read_pods():
    (role,) = [d for d in _manifests()["rbac.yaml"] if d["kind"] == "Role"]
    grants = {(r, v) for rule in role["rules"] for r in rule["resources"] for v in rule["verbs"]}
    for needed in [("jobs", "create"), ("jobs", "delete"), ("jobs", "watch"), ("pods", "list")]:
        assert needed in grants
    assert ("pods/log", "get") in grants
    assert not any(r == "secrets" for r, _ in grants)  # env from secrets needs no API access
    (binding,) = [d for d in _manifests()["rbac.yaml"] if d["kind"] == "RoleBinding"]
    assert binding["subjects"][0]["name"] == INSTANCE_ENV["DAGSTER_K8S_SERVICE_ACCOUNT"]


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _camel_keys(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {_camel(k) if "_" in k else k: _camel_keys(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_camel_keys(v) for v in obj]
    return obj


def test_helm_values_describe_the_same_instance_as_dagster_yaml(tmp_path, monkeypatch):
    values = yaml.safe_load((K8S / "helm" / "values.yaml").read_text())
    instance = yaml.safe_load(dep.K8S_INSTANCE_YAML.read_text())
    env = yaml.safe_load((K8S / "manifests" / "env-configmap.yaml").read_text())["data"]

    # user code: our module, the k8s profile, config inherited by runs and steps
    (code,) = values["dagster-user-deployments"]["deployments"]
    assert code["dagsterApiGrpcArgs"] == ["-m", "fib_assets.definitions"]
    assert code["includeConfigInLaunchedRuns"]["enabled"] is True
    assert {"name": "fib-assets-env"} in code["envConfigMaps"]
    assert {"name": "fib-assets-figshare"} in code["envSecrets"]
    assert env["FIB_ASSETS_DEPLOYMENT"] == "k8s"
    assert env["FIB_ASSETS_STORAGE_ROOT"].startswith("s3://")
    mounts = {m["mountPath"] for m in code["volumeMounts"]}
    assert {env["FIB_ASSETS_LANDING_ZONE"], env["FIB_ASSETS_SCRATCH"]} <= mounts

    # run launcher
    launcher = values["runLauncher"]
    assert launcher["type"] == "K8sRunLauncher"
    k8s = launcher["config"]["k8sRunLauncher"]
    assert k8s["runK8sConfig"] == _camel_keys(instance["run_launcher"]["config"]["run_k8s_config"])
    assert [s["name"] for s in k8s["envSecrets"]] == instance["run_launcher"]["config"][
        "env_secrets"
    ]

    # Postgres: external by default, password only through the secret, psycopg2 driver
    pg = values["postgresql"]
    assert pg["enabled"] is False and pg["postgresqlPassword"] == ""
    assert values["generatePostgresqlPasswordSecret"] is False
    assert pg["postgresqlScheme"] == instance["storage"]["postgres"]["postgres_db"]["scheme"]

    # S3 compute logs
    logs = values["computeLogManager"]
    assert logs["type"] == "S3ComputeLogManager"
    s3 = logs["config"]["s3ComputeLogManager"]
    assert s3["bucket"] == env["FIB_ASSETS_LOG_BUCKET"]
    assert s3["prefix"] == instance["compute_logs"]["config"]["prefix"]

    # run queue, pools and monitoring: the same numbers in both files
    assert values["concurrency"]["enabled"] is True
    assert values["concurrency"]["pools"] == _camel_keys(instance["concurrency"]["pools"])
    runs = values["concurrency"]["runs"]
    assert runs["maxConcurrentRuns"] == instance["concurrency"]["runs"]["max_concurrent_runs"]
    assert runs["tagConcurrencyLimits"] == instance["concurrency"]["runs"]["tag_concurrency_limits"]
    monitoring = values["dagsterDaemon"]["runMonitoring"]
    assert monitoring == _camel_keys(instance["run_monitoring"])
    # every long-running Dagster pod on the CPU pool
    for key in ("dagsterWebserver", "dagsterDaemon"):
        assert values[key]["nodeSelector"] == dep.CPU_NODE_SELECTOR
    assert code["nodeSelector"] == dep.CPU_NODE_SELECTOR
    assert values["serviceAccount"]["name"] == values["global"]["serviceAccountName"] == "dagster"


def test_dockerfile_builds_a_cpu_and_a_cuda_image_of_the_same_code():
    text = (REPO / "Dockerfile").read_text()
    stages = {
        line.split()[-1]
        for line in text.splitlines()
        if line.upper().startswith("FROM ") and " AS " in line.upper()
    }
    assert {"cpu", "cuda"} <= stages
    assert "fib_assets.definitions" in text or "dagster" in text
    ignored = (REPO / ".dockerignore").read_text().split()
    for path in (".venv", "data", ".dagster_home", ".git"):
        assert path in ignored or f"{path}/" in ignored
    # no credentials are baked into an image
    assert "AWS_SECRET_ACCESS_KEY" not in text and "FIGSHARE_TOKEN=" not in text
    assert os.path.basename(str(dep.K8S_DIR)) == "k8s"
