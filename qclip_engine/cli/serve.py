"""qclip-serve: score videos over HTTP, batching concurrent requests into one model call.

    qclip-serve ARTIFACT [--batch N] [--engine ENGINE] [--host HOST] [--port PORT]
                [--allow-dir DIR ...] [--max-upload-mb MB] [--queue N] [--timeout-s S] [--workers N]
                [--max-uploads N] [--min-upload-kib-s KIB_S] [--upload-grace-s S]
                [--max-pixels N] [--max-frames N] [--max-decode-s S] [--decode-budget-mpx MPX]
                [--header-timeout-s S] [--max-connections-per-client N] [--max-receives-per-client N]
                [--ray ADDRESS --replicas N [--max-replicas M] [--replica-cpus C] [--replica-gpus G]]

    curl -F file=@clip.mp4 http://127.0.0.1:8000/v1/score
    curl -H 'content-type: application/json' -d '{"path": "/data/clip.mp4"}' http://127.0.0.1:8000/v1/score

Endpoints: POST /v1/score, GET /healthz (alive), GET /readyz (model loaded and warm),
GET /metrics (Prometheus). Path requests are refused unless the file's real path lies
under an --allow-dir. SIGINT/SIGTERM: the listening socket closes at once (new connections are
refused, so a load balancer sees the instance leave; /readyz does not answer during the drain),
idle keep-alive connections close, requests in flight are answered and their connections closed
after the answer; then the model stops and the process exits (uvicorn re-raises the signal, so
the status is the signal's). Exit status 1: the
model could not be loaded; 2: bad arguments. Defaults: ``qclip-serve --help`` (from
qclip_engine/defaults.py). ``--help`` and argument errors import neither torch nor the web
stack: the service is imported in main, after the checks.

With ``--ray`` the same app runs on Ray Serve replicas (``qclip_engine/cluster/serve_app.py``):
Ray Serve's proxy listens on --host/--port and spreads requests over the replicas; the artifact
and directory paths are the replicas' (each replica checks them); SIGINT/SIGTERM delete the
application (requests in flight are answered, then each replica's model stops) and exit 0; exit
status 1: the deployment failed (a replica could not load the model).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import defaults
from .arguments import add_decode_limit_options, decode_limits, non_negative_float, positive_float, positive_int


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qclip-serve", description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("artifact", type=Path, help="artifact directory (from training or qclip-export)")
    parser.add_argument("--batch", type=positive_int, default=defaults.BATCH, help="most videos per model call")
    parser.add_argument("--engine", choices=defaults.ENGINES, default="auto",
                        help="auto: on a GPU TensorRT (with a plan) or torch; on the CPU the engine --precision "
                             "auto measures fastest")
    parser.add_argument("--device", default=defaults.DEVICE, help="auto, cpu or cuda[:N]")
    parser.add_argument("--decoder", default=defaults.DECODER, choices=defaults.DECODERS,
                        help="host: PyAV on the CPU; device: frames stay on the backend's device (NVDEC through "
                             "DALI on a GPU); auto: device for a CUDA backend when DALI and cuda-python import")
    parser.add_argument("--torch-mode", default=defaults.TORCH_MODE, choices=defaults.TORCH_MODES,
                        help="how the torch backend runs on a GPU: CUDA graphs per batch size or torch.compile "
                             "(max-autotune), prepared before the service is ready")
    parser.add_argument("--precision", default=defaults.PRECISION, choices=defaults.PRECISIONS,
                        help="auto: FP16 on a GPU; on the CPU the fastest backend and precision measured at start-up "
                             "among those the CPU has and whose score drift the artifact records within limits")
    parser.add_argument("--host", default=defaults.SERVE_HOST, help="interface to bind (0.0.0.0 exposes the service)")
    parser.add_argument("--port", type=int, default=defaults.SERVE_PORT, help="0: any free port (uvicorn logs it)")
    parser.add_argument("--allow-dir", type=Path, action="append", default=[], metavar="DIR",
                        help="a directory whose files may be scored by path (repeatable); without one, uploads only")
    parser.add_argument("--max-upload-mb", type=positive_float, default=defaults.MAX_UPLOAD_MB,
                        help="largest accepted upload (MiB)")
    parser.add_argument("--queue", type=positive_int, default=None,
                        help=f"requests in flight before new ones get 503; None: {defaults.QUEUE_PER_BATCH} × batch")
    parser.add_argument("--timeout-s", type=positive_float, default=defaults.REQUEST_TIMEOUT_S,
                        help="per-request deadline, from its headers to its answer, upload included (504 past it)")
    parser.add_argument("--max-uploads", type=positive_int, default=defaults.MAX_UPLOADS,
                        help="multipart uploads received at once before new ones get 503 (JSON path requests "
                             "take none of these slots); a body still arriving holds no --queue slot")
    parser.add_argument("--min-upload-kib-s", type=non_negative_float, default=defaults.MIN_UPLOAD_KIBPS,
                        help="KiB/s: after --upload-grace-s, a request body whose average rate since it began is "
                             "below this is dropped with 408 upload_too_slow (0: no minimum)")
    parser.add_argument("--upload-grace-s", type=positive_float, default=defaults.UPLOAD_GRACE_S,
                        help="seconds a request body may take before --min-upload-kib-s applies")
    add_decode_limit_options(parser)
    limits = parser.add_argument_group("decodes at once")
    limits.add_argument("--decode-budget-mpx", type=positive_float, default=None,
                        help="megapixels of pictures decoded at once (a decode waits for its share); None: "
                             f"{defaults.SERVE_DECODE_BUDGET_PICTURES} × --max-pixels")
    clients = parser.add_argument_group("connections and receives per client address")
    clients.add_argument("--header-timeout-s", type=positive_float, default=defaults.HEADER_TIMEOUT_S,
                         help="a request's headers must be complete this long after its connection opened or "
                              "its previous answer (408 header_timeout, connection closed)")
    clients.add_argument("--max-connections-per-client", type=positive_int, default=defaults.MAX_CONNECTIONS_PER_CLIENT,
                         help="open connections per client address; one more is answered 429 too_many_connections "
                              "and closed")
    clients.add_argument("--max-receives-per-client", type=positive_int, default=defaults.MAX_RECEIVES_PER_CLIENT,
                         help="request bodies received at once per client address; one more is 429 too_many_requests")
    parser.add_argument("--strict", action="store_true",
                        help="a file cut short is the error 422 truncated; without it, it is scored on what is "
                             "there and the answer carries a truncated warning")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help=f"decode threads; None: the engine's default ({defaults.decode_workers()} here)")
    parser.add_argument("--batch-wait-ms", type=float, default=defaults.SERVE_BATCH_WAIT_S * 1e3,
                        help="how long a partial batch waits for more videos")
    parser.add_argument("--upload-dir", type=Path, default=None,
                        help="where uploads are spooled; None: the system temp directory")
    parser.add_argument("--monitor", type=Path, default=None, metavar="CONFIG",
                        help="also watch the live sources of this qclip-monitor config, with the same model and "
                             "batcher: the monitor's API (/v1/sources, /v1/events) joins this one")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    parser.add_argument("--no-access-log", action="store_true", help="no uvicorn line per request")
    ray = parser.add_argument_group("Ray Serve (the ray extra)")
    ray.add_argument("--ray", default=None, metavar="ADDRESS",
                     help="serve on Ray Serve replicas of a Ray cluster: local (start one here), auto (the running "
                          "one, or RAY_ADDRESS), or an address (host:6379, ray://host:10001) — as qclip-score --ray")
    ray.add_argument("--replicas", type=positive_int, default=None,
                     help="replicas (each loads the model; default 1); with --max-replicas, the fewest kept")
    ray.add_argument("--max-replicas", type=positive_int, default=None,
                     help="autoscale between --replicas and this many replicas")
    ray.add_argument("--replica-cpus", type=non_negative_float, default=None, help="CPUs per replica (default 1)")
    ray.add_argument("--replica-gpus", type=non_negative_float, default=None,
                     help="GPUs per replica (default 0; fractions share a GPU)")
    return parser


def settings_from_args(args: argparse.Namespace):
    """The ``ServeSettings`` of parsed arguments (imports the service: call after the cheap checks)."""
    from ..serve.settings import ServeSettings

    limits = decode_limits(args)
    return ServeSettings(
        artifact=args.artifact,
        engine=args.engine,
        device=args.device,
        precision=args.precision,
        torch_mode=args.torch_mode,
        decoder=args.decoder,
        batch=args.batch,
        workers=args.workers,
        allow_dirs=tuple(args.allow_dir),
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        queue=args.queue,
        timeout_s=args.timeout_s,
        batch_wait_s=args.batch_wait_ms / 1e3,
        upload_dir=args.upload_dir,
        max_uploads=args.max_uploads,
        min_upload_bytes_per_s=args.min_upload_kib_s * 1024,
        upload_grace_s=args.upload_grace_s,
        strict=args.strict,
        max_pixels=limits.max_pixels,
        max_frames=limits.max_frames,
        max_decode_s=limits.max_seconds,
        decode_budget_pixels=None if args.decode_budget_mpx is None else max(1, round(args.decode_budget_mpx * 1e6)),
        header_timeout_s=args.header_timeout_s,
        max_connections_per_client=args.max_connections_per_client,
        max_receives_per_client=args.max_receives_per_client,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    scale = {"replicas": args.replicas, "max_replicas": args.max_replicas, "num_cpus": args.replica_cpus,
             "num_gpus": args.replica_gpus}
    if args.ray is not None:
        if args.monitor is not None:
            parser.error("--monitor runs in this process's service; it cannot be combined with --ray")
        return serve_on_ray(parser, args, {key: value for key, value in scale.items() if value is not None})
    if any(value is not None for value in scale.values()):
        parser.error("--replicas, --max-replicas, --replica-cpus and --replica-gpus need --ray")
    # Cheap checks before the model is touched: a typo fails in a second, not after loading.
    if not args.artifact.is_dir():
        parser.error(f"artifact directory not found: {args.artifact}")
    for directory in args.allow_dir:
        if not directory.is_dir():
            parser.error(f"--allow-dir {directory}: not a directory")
    if args.upload_dir is not None and not args.upload_dir.is_dir():
        parser.error(f"--upload-dir {args.upload_dir}: not a directory")
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must lie in 0..65535, got {args.port}")
    if args.batch_wait_ms < 0:
        parser.error("--batch-wait-ms must be ≥ 0")
    budget = args.decode_budget_mpx
    if budget is not None and budget * 1e6 < args.max_pixels:
        parser.error(f"--decode-budget-mpx {budget:g} is below one picture of --max-pixels {args.max_pixels}")
    watched = None
    if args.monitor is not None:
        from ..monitor import MonitorError, load_config

        try:
            watched = load_config(args.monitor)
        except MonitorError as exc:
            parser.error(f"--monitor {args.monitor}: {exc.code}: {exc.message}")

    import logging

    import uvicorn

    from ..serve import create_app, guarded_protocol

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings_from_args(args)
    server: uvicorn.Server | None = None

    def stop_server() -> None:  # the model failed to load: no point in answering 503 for ever
        server.should_exit = True

    app = create_app(settings, on_fatal=stop_server)
    if watched is not None:  # one model and one batcher for uploads and live sources
        from dataclasses import replace

        from ..monitor.shared import attach_monitor

        monitor_settings, rules, sources = watched
        # --allow-dir, when given, bounds the monitor's API files too (else the config's allow_dirs do)
        allowed = replace(monitor_settings, allow_dirs=tuple(str(d) for d in args.allow_dir)) if args.allow_dir \
            else monitor_settings
        monitor = attach_monitor(app, allowed, rules, sources, batch=settings.batch)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=not args.no_access_log,
        # Requests in flight at shutdown finish or time out on their own deadline; then stop.
        timeout_graceful_shutdown=int(args.timeout_s) + 5,
    )
    config.load()  # uvicorn's own HTTP protocol class, which the header deadline and the per-address bound wrap
    config.http_protocol_class = guarded_protocol(
        config.http_protocol_class, header_timeout_s=settings.header_timeout_s,
        max_per_client=settings.max_connections_per_client, on_refusal=app.state.service.metrics.refused)
    if watched is None:
        server = uvicorn.Server(config)
    else:
        from .monitor import server_closing_feed

        server = server_closing_feed(config, monitor)
    server.run()
    load_error = app.state.service.load_error
    if load_error:
        print(f"qclip-serve: the model could not be loaded: {load_error}", file=sys.stderr)
        return 1
    return 0


def serve_on_ray(parser: argparse.ArgumentParser, args: argparse.Namespace, scale: dict) -> int:
    """``--ray``: the same app on Ray Serve replicas, until SIGINT/SIGTERM."""
    if not 1 <= args.port <= 65535:
        parser.error(f"--port must lie in 1..65535 with --ray, got {args.port}")
    if args.batch_wait_ms < 0:
        parser.error("--batch-wait-ms must be ≥ 0")
    if "max_replicas" in scale and scale["max_replicas"] < scale.get("replicas", 1):
        parser.error("--max-replicas must be ≥ --replicas")

    import logging

    try:
        from ..cluster.serve_app import run_service
    except ImportError as exc:
        parser.error(f"--ray needs the ray extra (pip install 'qclip-engine[ray]'): {exc}")

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_service(settings_from_args(args), address=args.ray or None, host=args.host, port=args.port,
                       log_level=args.log_level, access_log=not args.no_access_log, **scale)


if __name__ == "__main__":
    sys.exit(main())
