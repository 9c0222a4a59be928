"""Ray Serve: the app of ``qclip-serve`` (``serve/app.py: create_app``) on N replicas behind Ray
Serve's HTTP proxy — same routes, status codes, error codes, limits and ``/metrics``.

Two ways to start it::

    qclip-serve ARTIFACT --ray ADDRESS --replicas N [--max-replicas M] [--replica-cpus C]
                [--replica-gpus G] [the other qclip-serve options]
    serve run qclip_engine.cluster.serve_app:app_builder artifact=DIR replicas=2 batch=8 ...

Each replica builds the app from the same ``ServeSettings`` when it starts (``serve.ingress`` with
a builder function: the app holds threads and cannot travel pickled) and Ray Serve runs the app's
lifespan there, as uvicorn does for ``qclip-serve``: startup loads the model
(``QualityService.start``), the replica's destructor runs the shutdown (``QualityService.stop``)
after Ray Serve has let the requests in flight finish (``graceful_shutdown_timeout_s``).
``check_health`` is ``/readyz``'s test: the first call (a replica takes no traffic before it
passes) waits for the model, so the application is RUNNING only once every replica is warm, a
model that cannot load fails the deployment, and a model thread that stops gets its replica
replaced by Ray Serve. Every answer carries ``X-QCLIP-Replica`` (the Ray Serve replica id);
``/metrics`` is the answering replica's own registry, with ``qclip_replica_info{replica}``.

Ray is imported in ``cluster/`` only (here and in ``batch.py``); the rest of the library never does.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import typing
from pathlib import Path

from ray import serve
from ray.serve import Application, Deployment

from ..serve.settings import ServeSettings

log = logging.getLogger("qclip_engine.cluster")

APP_NAME = "qclip"
DEPLOYMENT_NAME = "QCLIPReplica"
REPLICA_HEADER = "X-QCLIP-Replica"
LOAD_POLL_S = 0.05
# app_builder's keys besides the ServeSettings fields, with their types.
SCALE_KEYS = {"replicas": int, "max_replicas": int, "num_cpus": float, "num_gpus": float}


class ReplicaHeader:
    """ASGI middleware: every answer names the replica that served it."""

    def __init__(self, app, replica: str):
        self.app, self.header = app, (REPLICA_HEADER.lower().encode(), replica.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), self.header]}
            await send(message)

        await self.app(scope, receive, send_with_header)


def check_paths(settings: ServeSettings) -> None:
    """The paths ``qclip-serve`` checks before it starts; under Ray they are the replicas' paths."""
    if settings.artifact is None or not Path(settings.artifact).is_dir():
        raise FileNotFoundError(f"artifact directory not found: {settings.artifact}")
    for directory in settings.allow_dirs:
        if not Path(directory).is_dir():
            raise NotADirectoryError(f"allow_dirs {directory}: not a directory")
    if settings.upload_dir is not None and not Path(settings.upload_dir).is_dir():
        raise NotADirectoryError(f"upload_dir {settings.upload_dir}: not a directory")


def replica_app(settings: ServeSettings, replica: str):
    """The app of ``qclip-serve`` for one replica: the ``X-QCLIP-Replica`` header on every answer
    and ``qclip_replica_info{replica}`` in its ``/metrics``."""
    from prometheus_client import Gauge

    from ..serve.app import create_app

    check_paths(settings)
    app = create_app(settings)
    app.add_middleware(ReplicaHeader, replica=replica)
    Gauge("qclip_replica_info", f"The Ray Serve replica whose counters these are (its {REPLICA_HEADER} header)",
          ["replica"], registry=app.state.service.metrics.registry).labels(replica).set(1)
    return app


async def wait_ready(service) -> None:
    """Ray Serve's health check of a replica: wait while the model loads, then ``/readyz``'s test."""
    while service.engine is None and service.load_error is None and not service.stopping:
        await asyncio.sleep(LOAD_POLL_S)
    if not service.ready:
        raise RuntimeError(service.not_ready_error().message)


def deployment_options(settings: ServeSettings, replicas: int = 1, max_replicas: int | None = None,
                       num_cpus: float = 1.0, num_gpus: float = 0.0) -> dict:
    """``serve.deployment`` options: ``replicas`` fixed, or autoscaled up to ``max_replicas``
    (target: one batch of requests in flight per replica); CPUs and GPUs per replica."""
    if replicas < 1 or (max_replicas is not None and max_replicas < replicas):
        raise ValueError(f"need 1 ≤ replicas ≤ max_replicas, got {replicas} and {max_replicas}")
    if num_cpus < 0 or num_gpus < 0:
        raise ValueError(f"num_cpus and num_gpus must be ≥ 0, got {num_cpus} and {num_gpus}")
    options = {
        "ray_actor_options": {"num_cpus": num_cpus, "num_gpus": num_gpus},
        # Room for every request a replica's own limits let in (--queue admitted, --max-uploads
        # bodies arriving): past them the replica answers 503 overloaded as qclip-serve does;
        # Ray Serve's router sends each request to the less busy of two replicas.
        "max_ongoing_requests": settings.queue_limit + settings.max_uploads,
        # As qclip-serve's uvicorn: requests in flight at shutdown end on their own deadline.
        "graceful_shutdown_timeout_s": settings.timeout_s + 5,
    }
    if max_replicas is None or max_replicas == replicas:
        options["num_replicas"] = replicas
    else:
        options["autoscaling_config"] = {"min_replicas": replicas, "max_replicas": max_replicas,
                                         "target_ongoing_requests": settings.batch}
    return options


def replica_deployment(settings: ServeSettings, **scale) -> Deployment:
    """The Ray Serve deployment of ``settings`` (``scale``: ``deployment_options``'s arguments)."""

    def build_app():  # serve.ingress runs it on each replica as the replica starts
        return replica_app(settings, serve.get_replica_context().replica_id.unique_id)

    @serve.ingress(build_app)
    class QCLIPReplica:
        async def check_health(self):
            await wait_ready(self.app.state.service)

    return serve.deployment(QCLIPReplica, name=DEPLOYMENT_NAME, **deployment_options(settings, **scale))


def build_app(settings: ServeSettings, **scale) -> Application:
    """The Ray Serve application (for ``serve.run``) of ``settings`` on ``scale`` replicas."""
    return replica_deployment(settings, **scale).bind()


def _convert(hint, text: str):
    """One ``key=value`` string of ``serve run`` as the ServeSettings field type ``hint``."""
    if typing.get_origin(hint) is tuple:  # allow_dirs: comma-separated
        item = typing.get_args(hint)[0]
        return tuple(item(part) for part in text.split(",") if part)
    args = typing.get_args(hint)
    if type(None) in args:
        if text.strip().lower() in ("", "none"):
            return None
        (hint,) = [a for a in args if a is not type(None)]
    if hint is bool:
        if text.strip().lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise ValueError(f"not a boolean: {text!r}")
        return text.strip().lower() in ("1", "true", "yes", "on")
    return hint(text)


def settings_from_strings(args: dict[str, str]) -> ServeSettings:
    """``ServeSettings`` from ``key=value`` strings named as its fields (``-`` or ``_``)."""
    hints = typing.get_type_hints(ServeSettings)
    values = {}
    for key, text in args.items():
        name = key.replace("-", "_")
        if name not in hints:
            known = ", ".join([*hints, *SCALE_KEYS])
            raise ValueError(f"unknown argument {key!r}; known: {known}")
        try:
            values[name] = _convert(hints[name], str(text))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{key}={text!r}: {exc}") from None
    if values.get("artifact") is None:
        raise ValueError("artifact=DIR is required")
    return ServeSettings(**values)


def app_builder(args: dict[str, str]) -> Application:
    """``serve run qclip_engine.cluster.serve_app:app_builder artifact=DIR replicas=2 …``: any
    ``ServeSettings`` field (``allow_dirs`` comma-separated) and ``replicas``, ``max_replicas``,
    ``num_cpus``, ``num_gpus`` per replica."""
    args = {key.replace("-", "_"): value for key, value in args.items()}
    scale = {key: kind(args.pop(key)) for key, kind in SCALE_KEYS.items() if key in args}
    return build_app(settings_from_strings(args), **scale)


def failure_reason(exc: Exception) -> str:
    """Why the deployment failed: the last line of its status message (the replica's error), else ``exc``."""
    try:
        message = serve.status().applications[APP_NAME].deployments[DEPLOYMENT_NAME].message
    except (KeyError, AttributeError, RuntimeError):
        return str(exc)
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return lines[-1] if lines else str(exc)


def run_service(settings: ServeSettings, *, address: str | None, host: str, port: int, log_level: str = "info",
                access_log: bool = True, **scale) -> int:
    """``qclip-serve --ray``: deploy on the cluster at ``address`` (None: ``ray.init``'s own rule;
    ``local``: a new local cluster; ``auto``: the running one), serve on ``host:port`` until
    SIGINT/SIGTERM, then delete the application (its replicas drain and stop). 0, or 1 when the
    deployment failed (the model could not be loaded on a replica)."""
    import ray

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    ray.init(address=address, logging_level=log_level.upper())
    # After ray.init, which sets its own SIGTERM handler: a signal while the replicas start or serve
    # ends here, in the main thread, and the application is deleted below.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, interrupt)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_app(settings, **scale), name=APP_NAME, route_prefix="/",
                  logging_config={"log_level": log_level.upper(), "enable_access_log": access_log})
        log.info("serving on http://%s:%d (Ray Serve application %r)", host, port, APP_NAME)
        while True:
            signal.pause()
    except KeyboardInterrupt:
        return 0
    except RuntimeError as exc:  # the deployment failed: a replica could not start or load the model
        print(f"qclip-serve: the deployment failed: {failure_reason(exc)}", file=sys.stderr)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # the clean-up is bounded by Ray Serve's graceful shutdown
            signal.signal(sig, signal.SIG_IGN)
        try:
            serve.delete(APP_NAME)  # answers in flight, then each replica's lifespan shutdown
        finally:
            ray.shutdown()


__all__ = ["APP_NAME", "REPLICA_HEADER", "app_builder", "build_app", "deployment_options", "replica_deployment",
           "run_service", "settings_from_strings"]
