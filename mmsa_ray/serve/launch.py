"""Starting the Serve application: the app built from a ServeConfig and its resource plan,
`mmsa-ray serve` (start or join Ray, deploy, wait until every deployment has a running
replica, print the plan and the URLs, block until Ctrl-C), and the builder that
`serve run mmsa_ray.serve:app` and jobs/serve.yaml import.
"""

import argparse
import threading
import time
from typing import Any

from ray import serve
from ray.serve import Application

from mmsa_ray import console
from mmsa_ray.serve.config import DecodeLimits, IngressLimits, ServeConfig, add_serve_args, serve_config_from_args
from mmsa_ray.serve.deployments import Model, Preprocessor, Speech
from mmsa_ray.serve.ingress import Ingress
from mmsa_ray.serve.plan import DeploymentPlan, ResourcePlan, plan_resources

READY_TIMEOUT_S = 120.0  # `mmsa-ray serve` gives up when a deployment has no running replica by then


def _autoscaling(d: DeploymentPlan, target: float) -> dict[str, Any]:
    return {"min_replicas": d.min_replicas, "initial_replicas": max(1, d.min_replicas),
            "max_replicas": d.max_replicas, "target_ongoing_requests": target}


def build_app(config: ServeConfig, plan: ResourcePlan | None = None) -> Application:
    """The Serve application for `config`: Ingress -> (Speech) -> Preprocessor -> Model, bound,
    each deployment sized by `plan` (default: plan_resources on the Ray cluster this runs on)."""
    import ray

    plan = plan or plan_resources(config, ray.cluster_resources() if ray.is_initialized() else {})
    m, p, s = plan.model, plan.preprocessor, plan.speech
    model = Model.options(
        ray_actor_options={"num_cpus": m.num_cpus, "num_gpus": m.num_gpus},
        max_ongoing_requests=config.resolved_max_ongoing_requests(),
        max_queued_requests=config.max_queued_requests,
        autoscaling_config=_autoscaling(m, config.target_ongoing_requests or float(config.max_batch_size)),
        health_check_period_s=10.0,
        health_check_timeout_s=30.0,
    ).bind(config.checkpoint, "cuda" if m.num_gpus > 0 else "cpu", m.threads, config.max_batch_size,
           config.batch_wait_timeout_s)
    preprocessor = Preprocessor.options(
        ray_actor_options={"num_cpus": p.num_cpus},
        # Beyond its threads a replica only queues; keep a little slack so threads never idle.
        max_ongoing_requests=2 * p.threads,
        max_queued_requests=config.max_queued_requests,
        autoscaling_config=_autoscaling(p, float(p.threads)),
    ).bind(config.checkpoint, DecodeLimits.from_config(config), p.threads, config.faces == "on")
    speech = Speech.options(
        ray_actor_options={"num_cpus": s.num_cpus, "num_gpus": s.num_gpus},
        # one transcription runs per replica; one more waits there, the rest in the caller's queue
        max_ongoing_requests=2,
        max_queued_requests=config.max_queued_requests,
        autoscaling_config=_autoscaling(s, 1.0),
    ).bind(config.speech_config(s.threads), config.max_duration_s, config.speakers == "on")
    return Ingress.options(
        num_replicas=plan.ingress.max_replicas,
        ray_actor_options={"num_cpus": 0},  # it waits on I/O; the work is downstream
        max_ongoing_requests=config.ingress_max_ongoing_requests,
        max_queued_requests=config.ingress_max_queued_requests,
    ).bind(preprocessor, model, speech, IngressLimits.from_config(config, plan.max_inflight_requests),
           config.fuse_weights())


def app(args: dict[str, Any]) -> Application:
    """Application builder for `serve run mmsa_ray.serve:app checkpoint=DIR [key=value ...]`
    and the `args:` of jobs/serve.yaml; keys are ServeConfig fields (host/port there are
    ignored: the Serve config's http_options set them)."""
    return build_app(ServeConfig.from_dict(dict(args)))


def http_options(config: ServeConfig) -> dict[str, Any]:
    """Serve's cluster-wide HTTP options for `config`. The proxy's timeout is a backstop
    a few seconds behind the app's own (which answers 504 with a reason)."""
    return {"host": config.host, "port": config.port, "request_timeout_s": config.request_timeout_s + 5.0}


class ServeNotReady(ValueError):
    """The configuration does not come up on this cluster: a deployment has no running replica
    in time. The message names it and what it needs (one line from `mmsa-ray serve`, exit 2)."""


class _Deploying(threading.Thread):
    """serve.run in a thread (it blocks until every deployment runs), keeping its exception."""

    def __init__(self, app: Application, **kwargs: Any):
        super().__init__(daemon=True, name="mmsa-serve-deploy")
        self.app, self.kwargs, self.error = app, kwargs, None

    def run(self) -> None:
        try:
            serve.run(self.app, **self.kwargs)
        except BaseException as e:  # noqa: BLE001 - re-raised by wait_until_ready in the caller's thread
            self.error = e


def wait_until_ready(config: ServeConfig, plan: ResourcePlan, deploying: _Deploying,
                     timeout_s: float = READY_TIMEOUT_S) -> None:
    """Block until serve.run (in `deploying`) has returned, i.e. every deployment has a running
    replica; its error if it failed; ServeNotReady naming the deployments without a running
    replica after `timeout_s`."""
    import ray

    deploying.join(timeout_s)
    if isinstance(deploying.error, Exception):  # a replica that fails its start (Serve gave up on it)
        raise ServeNotReady(f"the application did not start: {deploying.error}") from deploying.error
    if deploying.error is not None:  # KeyboardInterrupt and the like
        raise deploying.error
    if not deploying.is_alive():
        return
    status = serve.status().applications.get(config.app_name)
    waiting = []
    for d in plan.deployments():
        state = status.deployments.get(d.name) if status else None
        if state is None or not state.replica_states.get("RUNNING"):
            replicas = dict(state.replica_states) if state else {}
            waiting.append(f"{d.name} (needs {d.num_cpus:g} CPU, {d.num_gpus:g} GPU per replica; replicas {replicas})")
    free = {k: round(v, 2) for k, v in ray.available_resources().items() if k in ("CPU", "GPU")}
    total = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
    raise ServeNotReady(f"no running replica after {timeout_s:g} s for: {'; '.join(waiting) or 'the application'}. "
                        f"The Ray cluster has {free} free of {total}: lower those deployments' CPUs or GPUs, "
                        "or add resources")


def run_serve(config: ServeConfig, ready_timeout_s: float = READY_TIMEOUT_S) -> None:
    """`mmsa-ray serve`: start (or join, with RAY_ADDRESS) Ray, deploy, block until Ctrl-C."""
    import os

    import ray

    if not os.path.isfile(os.path.join(config.checkpoint, "config.json")):
        raise FileNotFoundError(f"no checkpoint at {config.checkpoint!r} "
                                "(expected config.json and model.safetensors there)")
    started = console.init_ray()
    try:
        cluster = ray.cluster_resources()
        plan = plan_resources(config, cluster)
        print("mmsa-ray serve: plan (" + ", ".join(f"{cluster.get(k, 0):g} {k}" for k in ("CPU", "GPU")) + "):",
              flush=True)
        for line in plan.lines():
            print(f"  {line}", flush=True)
        if started:  # a cluster we joined may grow (autoscaling); our own local Ray will not
            plan.check_fits(cluster)
        logging_config = console.serve_logging_config()
        serve.start(proxy_location=config.proxy_location, http_options=http_options(config),
                    logging_config=logging_config)
        deploying = _Deploying(build_app(config, plan), name=config.app_name, route_prefix=config.route_prefix,
                               logging_config=logging_config)
        deploying.start()
        wait_until_ready(config, plan, deploying, ready_timeout_s)
        base = f"http://{config.host}:{config.port}{config.route_prefix.rstrip('/')}"
        print(f"mmsa-ray serve: page {base}/  POST {base}/v1/predict  GET {base}/healthz  docs {base}/docs  "
              "(Ctrl-C stops)", flush=True)
        while True:
            time.sleep(3600)
    finally:  # Ctrl-C: cli.run has printed its one line; it exits 130
        serve.shutdown()
        if started:
            ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    """`mmsa-ray serve --checkpoint DIR [limits ...]`: serve locally until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="mmsa-ray serve",
        description="Serve a checkpoint over HTTP: POST /v1/predict (multipart file + transcript), GET /healthz, "
        "/docs. The deployments' CPUs and replicas default to a plan fitted to the Ray cluster (printed at start).",
    )
    add_serve_args(parser)
    args = console.parse_args(parser, argv)
    try:
        config = serve_config_from_args(args)
    except ValueError as e:
        parser.error(str(e))
    run_serve(config)
    return 0
