"""qclip-monitor: watch many live sources with one model; window records and events as JSONL.

    qclip-monitor CONFIG [--artifact DIR] [--out FILE] [--port P [--host H] [--allow-dir DIR ...]]
                  [--batch N] [--window-s S] [--hop-s S] [--stall-s S] [--webhook URL] [--duration-s S]

CONFIG is a YAML or JSON file of settings, alert rules and sources (qclip_engine/monitor/settings.py;
the README shows one); the flags given override its settings. Every window record and event is
one JSON line on --out (default stdout). With --port, the HTTP API (qclip_engine/monitor/http.py:
sources listed, added and removed, a Server-Sent Events feed, Prometheus /metrics) listens on
--host (loopback by default). Runs until SIGINT/SIGTERM or --duration-s. Exit status 2: bad
arguments or a bad config (one line on stderr); 1: the model could not be loaded; 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from .. import defaults
from .arguments import add_decode_limit_options, positive_float, positive_int

# The settings a flag may override (flag name = setting name with dashes).
_SETTING_FLAGS = ("window_s", "hop_s", "stall_s", "timeout_s", "freeze_s", "black_s", "webhook")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qclip-monitor", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("config", type=Path, help="YAML or JSON file: settings, alerts, sources")
    p.add_argument("--artifact", type=Path, metavar="DIR", default=None,
                   help="trained artifact directory; None: the zero-shot model of --backbone")
    p.add_argument("--backbone", default=defaults.BACKBONE, help="zero-shot model backbone, without --artifact")
    p.add_argument("--weights", metavar="FILE", default=None, help="local backbone weights file, for offline use")
    p.add_argument("--engine", default="auto", choices=defaults.ENGINES,
                   help="inference backend; auto: on a GPU TensorRT (with a plan) or torch, on the CPU onnxruntime "
                        "when installed (eager torch starves behind many source threads), else torch")
    p.add_argument("--device", default=defaults.DEVICE, help="auto, cpu or cuda[:N]")
    p.add_argument("--precision", default=defaults.PRECISION, choices=defaults.PRECISIONS, help="model precision")
    p.add_argument("--batch", type=positive_int, default=defaults.BATCH,
                   help="most windows per model call (a call takes what is waiting; it never waits to fill)")
    p.add_argument("--out", type=Path, default=None, metavar="FILE", help="JSONL of records and events; None: stdout")
    p.add_argument("--port", type=int, default=None, help="serve the HTTP API on this port (0: any free port)")
    p.add_argument("--host", default=defaults.SERVE_HOST, help="the HTTP API's interface")
    p.add_argument("--root-path", default="", help="the URL prefix a reverse proxy serves the API under")
    p.add_argument("--allow-dir", type=Path, action="append", default=[], metavar="DIR",
                   help="a folder whose files the HTTP API may add as sources (repeatable); without one, URLs only")
    p.add_argument("--duration-s", type=positive_float, default=None, help="stop after this long; None: until a signal")
    settings = p.add_argument_group("settings (override the config file's)")
    settings.add_argument("--window-s", type=positive_float, default=None, help="window length, seconds")
    settings.add_argument("--hop-s", type=positive_float, default=None, help="seconds between window starts")
    settings.add_argument("--stall-s", type=positive_float, default=None, help="no frame this long: stalled")
    settings.add_argument("--timeout-s", type=positive_float, default=None, help="network open/read timeout")
    settings.add_argument("--freeze-s", type=positive_float, default=None, help="an unchanged picture this long: frozen")
    settings.add_argument("--black-s", type=positive_float, default=None, help="a black picture this long: black")
    settings.add_argument("--webhook", default=None, metavar="URL", help="POST every alert event here as JSON")
    add_decode_limit_options(p)
    p.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"))
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # the score CLI's engine options that the monitor does not expose
    args.sampler, args.workers, args.strict, args.decoder, args.torch_mode = None, None, False, "host", defaults.TORCH_MODE
    if args.port is not None and not 0 <= args.port <= 65535:
        parser.error(f"--port must lie in 0..65535, got {args.port}")
    if args.artifact is not None and not args.artifact.is_dir():
        parser.error(f"artifact directory not found: {args.artifact}")
    for directory in args.allow_dir:
        if not directory.is_dir():
            parser.error(f"--allow-dir {directory}: not a directory")

    import dataclasses
    import logging

    from ..monitor import Monitor, MonitorError, load_config

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings, rules, sources = load_config(args.config)
        overrides = {k: getattr(args, k) for k in _SETTING_FLAGS if getattr(args, k) is not None}
        if args.allow_dir:
            overrides["allow_dirs"] = tuple(str(d) for d in args.allow_dir)
        settings = dataclasses.replace(settings, **overrides)
    except MonitorError as exc:
        print(f"qclip-monitor: {exc.code}: {exc.message}", file=sys.stderr)
        return 2
    out = sys.stdout if args.out is None else None
    if out is None:
        try:
            out = open(args.out, "a", buffering=1)
        except OSError as exc:
            print(f"qclip-monitor: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    from .score import build_engine

    args.engine = monitor_engine(args.engine, args.device)
    try:
        engine = build_engine(args)
    except Exception as exc:
        print(f"qclip-monitor: the model could not be loaded: {exc}", file=sys.stderr)
        return 1
    monitor = Monitor(engine, settings, rules)
    feed = monitor.subscribe()  # before the sources, so the JSONL says when each was added
    for spec in sources:
        monitor.add(spec)
    writer = threading.Thread(target=_write_jsonl, args=(feed, out), name="qclip-monitor-jsonl", daemon=True)
    writer.start()
    monitor.start()
    try:
        if args.port is not None:
            _serve(monitor, args)  # uvicorn handles SIGINT/SIGTERM
        else:
            stop = threading.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
            stop.wait(args.duration_s)  # None: until a signal
    finally:
        monitor.stop()
        writer.join(timeout=5)
        if out is not sys.stdout:
            out.close()
    return 0


def monitor_engine(engine: str, device: str) -> str:
    """``auto`` on the CPU is ONNX Runtime when it is installed: the monitor's one model thread
    shares Python's GIL with every source's thread, and eager torch takes the GIL back after each
    operator — measured here with 32 sources, windows waited 1.7 s (p99) on torch against 0.1 s on
    ONNX Runtime (benchmarks/results/monitor_load_torch.json, monitor_load.json) — while an ONNX
    Runtime call releases it once."""
    if engine != "auto":
        return engine
    import importlib.util

    from ..runtime.base import resolve_device

    if resolve_device(device) == "cpu" and importlib.util.find_spec("onnxruntime") is not None:
        return "onnxruntime"
    return engine


def _write_jsonl(feed, out) -> None:
    for item in feed:
        try:
            out.write(json.dumps(item) + "\n")
            out.flush()
        except BrokenPipeError:  # the reader went away: stop writing, keep monitoring for the API
            return


def server_closing_feed(config, monitor):
    """A uvicorn server that tells ``monitor``'s Server-Sent Events streams to end when it is told to
    exit, so uvicorn's drain does not wait on them (the sources stop after the drain, and the JSONL
    written meanwhile is complete)."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            monitor.closing.set()  # the SSE streams end; the JSONL writer's subscription goes on
            super().handle_exit(sig, frame)

    return Server(config)


def _serve(monitor, args) -> None:
    """The HTTP API in this thread until SIGINT/SIGTERM (uvicorn handles them) or --duration-s."""
    import uvicorn

    from ..monitor.http import create_monitor_app

    app = create_monitor_app(monitor, root_path=args.root_path)
    server = server_closing_feed(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                                                access_log=False), monitor)
    if args.duration_s is not None:
        def time_up() -> None:  # as a signal would, without uvicorn re-raising one at its exit
            monitor.closing.set()
            server.should_exit = True

        timer = threading.Timer(args.duration_s, time_up)
        timer.daemon = True
        timer.start()
    server.run()


if __name__ == "__main__":
    sys.exit(main())
