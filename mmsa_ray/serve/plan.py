"""The resource plan of the Serve application: how many replicas of each deployment, with
how many CPUs and GPUs, fitted to the Ray cluster it starts on.

Every CPU setting of ServeConfig left at auto (None) takes a share of the cluster's CPUs:
the deployments that work on CPUs (Model without a GPU, Preprocessor, Speech on CPU)
split them evenly, at most one CPU each per replica. So `mmsa-ray serve` on 2 CPUs reserves
0.66 CPU per deployment and every one starts (three whole CPUs would leave Speech waiting
forever); on 1 CPU, 0.33 each. Replica counts left at auto scale with the cluster: at
most one model replica per GPU (or per 8 CPUs without GPUs), one preprocessing and one
speech replica per 4 CPUs, at least one of each; one ingress replica works on at most 4
uploads per cluster CPU at once. A cluster that shows no CPUs when the app
is built (an autoscaling cluster scaled to zero) gets one CPU and one replica per deployment.

`plan.lines()` is what `mmsa-ray serve` prints at start; `plan.check_fits(cluster)` names the
deployments whose smallest replica count cannot be placed, before anything waits on them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mmsa_ray.serve.config import ServeConfig

CPUS_PER_MODEL_REPLICA = 8  # auto model replicas without GPUs: one per this many cluster CPUs
CPUS_PER_WORKER_REPLICA = 4  # auto preprocessing / speech replicas: one per this many cluster CPUs
INFLIGHT_PER_CPU = 4  # auto max_inflight_requests: uploads per cluster CPU one ingress works on at once


@dataclass(frozen=True)
class DeploymentPlan:
    """One deployment's replicas (autoscaling between min and max) and each replica's reservation."""

    name: str
    min_replicas: int
    max_replicas: int
    num_cpus: float  # logical CPUs reserved per replica
    num_gpus: float = 0.0  # GPUs per replica
    threads: int = 1  # threads its work runs on (torch, CTranslate2, decoders)

    def line(self) -> str:
        replicas = f"{self.min_replicas}" if self.min_replicas == self.max_replicas else \
            f"{self.min_replicas}-{self.max_replicas}"
        return (f"{self.name:<12} replicas {replicas:<5} {self.num_cpus:.2f} CPU  {self.num_gpus:g} GPU  "
                f"{self.threads} thread{'s' if self.threads != 1 else ''} each")


@dataclass(frozen=True)
class ResourcePlan:
    model: DeploymentPlan
    preprocessor: DeploymentPlan
    speech: DeploymentPlan
    ingress: DeploymentPlan
    max_inflight_requests: int  # uploads one ingress replica works on at once (503 beyond)

    def deployments(self) -> tuple[DeploymentPlan, ...]:
        return self.ingress, self.speech, self.preprocessor, self.model

    def lines(self) -> list[str]:
        return [d.line() for d in self.deployments()]

    def minimum(self) -> dict[str, float]:
        """What the smallest replica counts reserve, {"CPU": n, "GPU": n}."""
        return {"CPU": sum(d.min_replicas * d.num_cpus for d in self.deployments()),
                "GPU": sum(d.min_replicas * d.num_gpus for d in self.deployments())}

    def check_fits(self, cluster: dict[str, float]) -> None:
        """ValueError naming what does not fit when the smallest replica counts need more
        CPUs or GPUs than `cluster` (ray.cluster_resources()) has."""
        need = self.minimum()
        short = {k: v for k, v in need.items() if v > cluster.get(k, 0.0) + 1e-6}
        if not short:
            return
        parts = ", ".join(f"{d.name} {d.min_replicas} x ({d.num_cpus:g} CPU, {d.num_gpus:g} GPU)"
                          for d in self.deployments() if d.num_cpus or d.num_gpus)
        have = ", ".join(f"{cluster.get(k, 0.0):g} {k}" for k in short)
        raise ValueError(f"the serve plan needs {', '.join(f'{v:g} {k}' for k, v in short.items())} for one replica "
                         f"of each deployment ({parts}) but the Ray cluster has {have}: leave --model-num-cpus, "
                         "--preprocess-num-cpus and --speech-num-cpus at auto, lower them, or add resources")


def plan_resources(config: ServeConfig, cluster: dict[str, float]) -> ResourcePlan:
    """The plan for `config` on a cluster with `cluster` resources (ray.cluster_resources())."""
    cpus, gpus = float(cluster.get("CPU", 0.0)), float(cluster.get("GPU", 0.0))
    model_gpus = config.resolved_num_gpus()
    speech_gpus = float(config.speech_num_gpus)
    on_cpus = 1 + (model_gpus == 0) + (speech_gpus == 0)  # the preprocessor always decodes on CPUs
    share = 1.0 if cpus <= 0 else min(1.0, math.floor(100 * cpus / on_cpus) / 100)

    def auto(value: float | None) -> float:
        return share if value is None else float(value)

    def replicas(value: int | None, per: float) -> int:
        return int(value) if value is not None else max(1, int(per))

    model_cpus = auto(config.model_num_cpus)
    model_max = replicas(config.max_replicas, gpus // model_gpus if model_gpus > 0 else cpus // CPUS_PER_MODEL_REPLICA)
    speech_cpus = auto(config.speech_num_cpus)
    return ResourcePlan(
        model=DeploymentPlan("Model", min(config.min_replicas, model_max), model_max, model_cpus, model_gpus,
                             config.model_threads or max(1, int(model_cpus))),
        preprocessor=DeploymentPlan("Preprocessor", 1, replicas(config.preprocess_replicas,
                                                                cpus // CPUS_PER_WORKER_REPLICA),
                                    auto(config.preprocess_num_cpus), 0.0, config.preprocess_threads),
        speech=DeploymentPlan("Speech", 1, replicas(config.speech_replicas, cpus // CPUS_PER_WORKER_REPLICA),
                              speech_cpus, speech_gpus, max(1, int(speech_cpus))),
        ingress=DeploymentPlan("Ingress", config.ingress_replicas, config.ingress_replicas, 0.0, 0.0, 1),
        max_inflight_requests=config.max_inflight_requests or max(INFLIGHT_PER_CPU, int(INFLIGHT_PER_CPU * cpus)),
    )
