"""Deployment profiles: one switch picks the executor, the resources and the storage.

``FIB_ASSETS_DEPLOYMENT=local`` (default) is the embedded laptop setup: SQLite instance under
``$DAGSTER_HOME``, data on local disk, the multiprocess executor. ``k8s`` is the cluster
setup described in ``k8s/README.md``: every step in its own pod (``k8s_job_executor``), CPU
steps on the CPU node pool, GPU steps (assets tagged with :func:`gpu_op_tags` and the
``gpu`` pool) on the tainted GPU node pool, data under ``$FIB_ASSETS_STORAGE_ROOT``
(``s3://bucket/prefix``). The instance itself (Postgres, K8sRunLauncher, S3 compute logs, run
queue) is not code: it is ``k8s/dagster.yaml``, rendered by the Helm chart from
``k8s/helm/values.yaml``.

Policy lives here once (STYLE.md): node-pool labels, taints and default step sizes are the
same constants in the executor config, the GPU tags, the manifests and the tests.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, cast

import dagster as dg

from fib_assets.defs.resources import QCThresholdsResource, StorageResource

Profile = Literal["local", "k8s"]
PROFILES: tuple[Profile, ...] = ("local", "k8s")
DEPLOYMENT_ENV = "FIB_ASSETS_DEPLOYMENT"

K8S_DIR = Path(__file__).resolve().parents[2] / "k8s"
K8S_INSTANCE_YAML = K8S_DIR / "dagster.yaml"

# Node pools are told apart by one label the operator puts on each pool (k8s/README.md);
# GPU nodes also carry the taint below, so only pods that tolerate it land there.
NODE_POOL_LABEL = "fib-assets/pool"
CPU_NODE_SELECTOR = {NODE_POOL_LABEL: "cpu"}
GPU_NODE_SELECTOR = {NODE_POOL_LABEL: "gpu"}
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
GPU_RESOURCE = "nvidia.com/gpu"
# the CUDA image of the same commit (Dockerfile target `cuda`); CPU steps keep the CPU image
GPU_IMAGE_ENV = "FIB_ASSETS_GPU_IMAGE"
GPU_PRIORITY_CLASS = "fib-assets-gpu"  # k8s/manifests/gpu-node-pool.yaml

# Dagster concurrency pool of every GPU step: `@dg.asset(pool=GPU_POOL, op_tags=GPU_OP_TAGS)`.
# Its limit (how many GPU steps run at once across all runs) is the instance's
# `concurrency.pools.default_limit` in k8s/dagster.yaml, or `dagster instance concurrency set
# gpu N` — set it to the number of GPUs in the node pool so steps queue in Dagster instead of
# sitting as unschedulable pods (dagster-io/dagster#24595).
GPU_POOL = "gpu"

# A step must finish within this (seconds) or Kubernetes kills it; a retry resumes from the
# block markers. Finished Jobs are garbage-collected after a day.
STEP_DEADLINE_S = 12 * 3600
JOB_TTL_S = 24 * 3600

_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


def deployment_profile(environ: Mapping[str, str] | None = None) -> Profile:
    """The profile named by ``$FIB_ASSETS_DEPLOYMENT`` (``local`` when unset or empty)."""
    env = os.environ if environ is None else environ
    value = (env.get(DEPLOYMENT_ENV) or "local").strip().lower()
    if value not in PROFILES:
        raise ValueError(
            f"{DEPLOYMENT_ENV}={env.get(DEPLOYMENT_ENV)!r} is not a deployment profile; "
            f"use one of {', '.join(PROFILES)}"
        )
    return cast(Profile, value)


def _quantity(name: str, value: str) -> str:
    if not _QUANTITY.match(str(value)):
        raise ValueError(f"{name}={value!r} is not a Kubernetes quantity (e.g. '32Gi', '500m')")
    return str(value)


def gpu_op_tags(
    gpus: int = 1, memory: str = "32Gi", cpu: str = "8", image: str | None = None
) -> dict[str, Any]:
    """``op_tags`` that put a step on the GPU node pool under ``k8s_job_executor``.

    The pod gets ``gpus`` whole GPUs (``nvidia.com/gpu`` request = limit), ``memory`` (request
    = limit, so the scheduler never overcommits a training step) and ``cpu`` cores requested,
    the GPU node selector and the toleration of the GPU taint, and a memory-backed
    ``/dev/shm`` for torch DataLoader workers. ``image`` (default ``$FIB_ASSETS_GPU_IMAGE``,
    the CUDA build of the same commit) replaces the step's image; unset, the step keeps the
    code location's image. Other executors ignore the tag, so the same asset runs unchanged
    on a laptop. Pair it with ``pool=GPU_POOL`` on the asset.
    """
    if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 1:
        raise ValueError(f"gpus must be a whole number >= 1, got {gpus!r}")
    memory = _quantity("memory", memory)
    cpu = _quantity("cpu", cpu)
    container: dict[str, Any] = {
        "resources": {
            "requests": {"cpu": cpu, "memory": memory, GPU_RESOURCE: str(gpus)},
            "limits": {"memory": memory, GPU_RESOURCE: str(gpus)},
        },
        "volume_mounts": [{"name": "dshm", "mount_path": "/dev/shm"}],
    }
    image = image or os.environ.get(GPU_IMAGE_ENV) or None
    if image:
        container["image"] = image
    return {
        "dagster-k8s/config": {
            "container_config": container,
            "pod_spec_config": {
                "node_selector": dict(GPU_NODE_SELECTOR),
                "tolerations": copy.deepcopy(GPU_TOLERATIONS),
                "priority_class_name": GPU_PRIORITY_CLASS,
                "volumes": [{"name": "dshm", "empty_dir": {"medium": "Memory"}}],
            },
        },
    }


GPU_OP_TAGS: dict[str, Any] = gpu_op_tags()

# Every step pod (CPU by default): the CPU node pool, a bounded size, a deadline, and no
# Kubernetes-level retries (Dagster's own retries resume from block markers instead).
CPU_STEP_K8S_CONFIG: dict[str, Any] = {
    "container_config": {
        "resources": {
            "requests": {"cpu": "2", "memory": "8Gi", "ephemeral-storage": "20Gi"},
            "limits": {"memory": "16Gi", "ephemeral-storage": "50Gi"},
        },
    },
    "pod_spec_config": {"node_selector": dict(CPU_NODE_SELECTOR)},
    "job_spec_config": {
        "active_deadline_seconds": STEP_DEADLINE_S,
        "backoff_limit": 0,
        "ttl_seconds_after_finished": JOB_TTL_S,
    },
}

# k8s_job_executor config. Image, namespace, service account, env and secrets are not here:
# step pods inherit them from the run launcher and the user-code deployment
# (includeConfigInLaunchedRuns in k8s/helm/values.yaml).
K8S_EXECUTOR_CONFIG: dict[str, Any] = {
    # pods per run; one region's graph has at most a handful of parallel steps
    "max_concurrent": 8,
    "retries": {"enabled": {}},
    "step_k8s_config": CPU_STEP_K8S_CONFIG,
}


def executor_for(profile: Profile) -> dg.ExecutorDefinition:
    """``local``: Dagster's default multiprocess executor (in-process on request). ``k8s``:
    ``k8s_job_executor`` with :data:`K8S_EXECUTOR_CONFIG` (a pod per step)."""
    if profile == "local":
        return dg.multi_or_in_process_executor
    if profile == "k8s":
        # imported here so a laptop install never needs the Kubernetes client
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor.configured(K8S_EXECUTOR_CONFIG, name="k8s_job_executor")
    raise ValueError(f"unknown deployment profile {profile!r}; use one of {', '.join(PROFILES)}")


def resources_for(profile: Profile) -> dict[str, Any]:
    """Project-wide resources of ``profile``. ``k8s`` reads the storage root
    (``s3://bucket/prefix``) and the landing zone (a shared volume mounted in every pod) from
    ``FIB_ASSETS_STORAGE_ROOT`` / ``FIB_ASSETS_LANDING_ZONE`` at run time (set in the Helm
    values); S3 endpoint, region and credentials come from the environment / service account.
    """
    if profile == "local":
        return {"storage": StorageResource(), "qc_thresholds": QCThresholdsResource()}
    if profile == "k8s":
        return {
            "storage": StorageResource(
                root=dg.EnvVar("FIB_ASSETS_STORAGE_ROOT"),
                landing_zone=dg.EnvVar("FIB_ASSETS_LANDING_ZONE"),
            ),
            "qc_thresholds": QCThresholdsResource(),
        }
    raise ValueError(f"unknown deployment profile {profile!r}; use one of {', '.join(PROFILES)}")
