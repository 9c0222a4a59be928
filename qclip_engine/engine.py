"""``QualityEngine``: decode → motion → sample → batch → backend → one result per input.

Decoding runs in a pool of worker threads (PyAV decodes and converts outside the GIL)
ahead of the model: at most ``batch + 2 × workers`` inputs are in flight, so memory stays
bounded however many inputs there are. Sampled videos are batched by
:func:`qclip_engine.batching.next_batch` — up to ``batch``, or fewer once no video has
been decoded for ``batch_timeout_s`` — and run through the backend. Results come back in input order. A bad input becomes an error result (its code
from the error contract) and never stops the others.

Frame choice is the training pipeline's (``video/sampling.py: frame_indices``). Samplers that
ignore motion (``needs_motion`` false in the sampler registry: ``uniform``,
``uniform_random_start``, ``random``) pick among all N frames — ``uniform`` is the official
``linspace(0, N-1, K).round()`` — and decode only the frames they pick, by seeking. The others
decode candidates at a uniform stride (at most ``max_analysis_frames``), take their per-frame
motion ``m`` and pick among them.

Where the frames live is the frame source's business (``video/frames.py``): the host path
(PyAV → numpy) or the device path (frames stay on the backend's device from the decoder to
the backend: DALI/NVDEC, the motion kernel, an on-device gather and ``torch.stack``).
``decoder="auto"`` takes the device path for a CUDA backend when DALI and cuda-python import;
every result says which decoder ran (``video.decoder``).
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from . import defaults
from .artifact import calibrated_mos, load_artifact
from .batching import Closed, next_batch
from .errors import NonFiniteOutputError, error_record
from .model.qclip import QCLIP, QCLIPConfig
from .runtime import create_backend
from .video.frame_mse import frame_mse
from .video.frames import DECODERS, DeviceSource, HostSource, device_path_unavailable
from .video.limits import DecodeLimits
from .video.resize import check_preprocessing_size
from .video.sampling import candidate_indices, check_sampler, frame_indices

SAMPLER_SEED = defaults.SAMPLER_SEED


@dataclass
class VideoResult:
    """One input's outcome: a score, or an error record (never both)."""

    input: str
    score: float | None = None
    mos: float | None = None  # on the training set's scale, when the artifact has a calibration
    levels: dict[str, float] | None = None  # cosine similarity to each quality level, lowest first (the model's levels)
    frames: list[int] | None = None  # frame indices the model saw (display order, from 0)
    frame_times: list[float] | None = None  # their timestamps, seconds from the first frame
    video: dict | None = None  # probe summary: codec, size, fps, frame count, duration, vfr, rotation
    backend: str | None = None  # what scored it: engine-precision, e.g. onnxruntime-int8, torch-bf16
    warnings: list[dict] | None = None  # scored, but: {"code", "message"} (e.g. truncated)
    timing_ms: dict[str, float] = field(default_factory=dict)
    error: dict | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_record(self) -> dict:
        record = {k: v for k, v in asdict(self).items() if v is not None}
        if not self.ok:
            return {"input": self.input, "error": self.error, "timing_ms": self.timing_ms}
        return record


@dataclass
class SampledVideo:
    """A decoded input waiting for the backend."""

    input: str
    frames: np.ndarray  # uint8 [K, H, W, 3] at model size
    indices: np.ndarray
    times: np.ndarray
    video: dict | None
    timing_ms: dict[str, float]
    warnings: list[dict] | None = None
    ready: object | None = None  # device path on CUDA: the event after which ``frames`` are complete


def stack_frames(videos: list[SampledVideo]) -> np.ndarray | torch.Tensor:
    """One batch ``[B, K, H, W, 3]`` where the frames are: numpy on the host, a torch stack on their
    device (numpy frames joining device ones — a stream's — go up to that device). Frames made on a
    decode thread's CUDA stream are waited for on this one, and marked as used by it (so their
    memory is not reused under it)."""
    tensors = [v.frames for v in videos if not isinstance(v.frames, np.ndarray)]
    if not tensors:
        return np.stack([v.frames for v in videos])
    device = tensors[0].device
    for v in videos:
        if v.ready is not None:
            current = torch.cuda.current_stream(device)
            current.wait_event(v.ready)
            v.frames.record_stream(current)
    return torch.stack([torch.as_tensor(v.frames).to(device) for v in videos])


def error_result(source: str, exc: BaseException, timing_ms: dict | None = None) -> VideoResult:
    """``source``'s error result: the error contract's code and message (see ``errors.error_record``)."""
    return VideoResult(input=source, error=error_record(exc), timing_ms=timing_ms or {})


def sample_video(frame_source: HostSource, sampler, source: str | Path, strict: bool = False,
                 cancel: threading.Event | None = None) -> SampledVideo:
    """Decode and sample one file through ``frame_source`` (raises ``VideoError``): the engine's
    first stage, which needs no model (Ray's decode tasks run it on their own: cluster/batch.py).
    A set ``cancel`` stops the decode between packets (``cancelled``)."""
    s = frame_source.sample(source, sampler, strict=strict, cancel=cancel)
    video = {k: v for k, v in s.info.to_dict().items() if k not in ("path", "truncation")}
    video["decoder"] = s.decoder
    if s.fallback:
        video["decoder_fallback"] = s.fallback
    return SampledVideo(
        input=str(source),
        frames=s.frames,
        indices=s.indices,
        times=s.times,
        video=video,
        timing_ms={k: v * 1e3 for k, v in s.timing.items()},
        warnings=[{"code": "truncated", "message": s.info.truncation}] if s.info.truncation else None,
        ready=s.ready,
    )


def sample_safely(frame_source: HostSource, sampler, source: str | Path, strict: bool = False) -> SampledVideo | VideoResult:
    """``sample_video``, or the input's error result: every input gets an answer."""
    t0 = time.perf_counter()
    try:
        return sample_video(frame_source, sampler, source, strict)
    except Exception as exc:  # one bad file never stops the rest
        return error_result(str(source), exc, {"decode": (time.perf_counter() - t0) * 1e3})


class QualityEngine:
    """Scores videos with a trained artifact (or, without one, the zero-shot model).

    ``engine``: ``auto`` | ``torch`` | ``onnxruntime`` | ``tensorrt`` (see
    :func:`qclip_engine.runtime.create_backend`); ``device``: ``auto`` | ``cpu`` | ``cuda[:N]``;
    ``precision``: ``auto`` (on the CPU: measured, ``runtime/cpu_choice.py``) | ``fp32`` | ``fp16``
    | ``bf16`` | ``int8``; ``decoder``: ``auto`` | ``host`` | ``device`` (``video/frames.py``);
    ``torch_mode``: ``eager`` | ``cuda_graphs`` | ``compile`` (CUDA, ``runtime/torch_backend.py``);
    ``sampler``: defaults to the artifact's; ``backbone``/``pretrained``: the zero-shot
    model's backbone when no artifact is given. ``strict``: a file that looks cut short is the
    ``truncated`` error instead of a score with a ``truncated`` warning (``video/scan.py``).
    ``preprocessing``: ``fast`` | ``reference`` | ``short_side_crop`` | ``mmcv_short_side_crop`` | ``fragments``
    | ``fragments_and_crop`` (``video/resize.py``);
    defaults to the model's ``config.preprocessing``, so an artifact is scored on frames made as
    in its training; all but ``fast`` run on the host decoder only (``auto`` says why in
    ``decoder_reason``). ``limits``: what one input may cost to decode (``video/limits.py``:
    picture size, frames, seconds, pixels decoded at once); the defaults when None.
    """

    def __init__(
        self,
        artifact: str | Path | None = None,
        *,
        engine: str = "auto",
        device: str = defaults.DEVICE,
        batch: int = defaults.BATCH,
        sampler: str | None = None,
        workers: int | None = None,
        max_analysis_frames: int = defaults.MAX_ANALYSIS_FRAMES,
        batch_timeout_s: float = defaults.BATCH_WAIT_S,
        backbone: str = QCLIPConfig.backbone,
        pretrained: str | None = QCLIPConfig.pretrained,
        precision: str = defaults.PRECISION,
        model: torch.nn.Module | None = None,  # a model of any registered family
        strict: bool = False,
        decoder: str = defaults.DECODER,
        torch_mode: str = defaults.TORCH_MODE,
        preprocessing: str | None = None,
        limits: DecodeLimits | None = None,
    ):
        if batch < 1:
            raise ValueError(f"batch must be ≥ 1, got {batch}")
        if model is None:
            if artifact is not None:
                model = load_artifact(artifact)  # of any registered family (model/families.py)
            else:
                model = QCLIP(QCLIPConfig(backbone=backbone, pretrained=pretrained))
                model.zero_shot = True
        self.model = model.eval()
        self.levels = tuple(model.levels)  # the records' level names, lowest first
        # How decoded frames reach model size: the model's own (as it was trained) unless overridden.
        self.preprocessing = preprocessing or model.config.preprocessing
        if self.preprocessing not in defaults.PREPROCESSINGS:
            raise ValueError(f"preprocessing must be one of {defaults.PREPROCESSINGS}, got {self.preprocessing!r}")
        check_preprocessing_size(self.preprocessing, tuple(model.image_size))
        self.artifact = Path(artifact) if artifact is not None else None
        self.workers = workers or defaults.decode_workers()
        # On the CPU, auto times its candidates beside this many decoding threads, as they will run.
        self.backend = create_backend(model, engine, device, artifact_dir=self.artifact, precision=precision,
                                      batch=batch, decode_workers=self.workers, torch_mode=torch_mode)
        if hasattr(self.backend, "warm_up"):  # CUDA graphs / compile: captured now, not on the first batch
            self.backend.warm_up()
        self.calibration = model.calibration
        self.image_size = tuple(model.image_size)
        self.num_frames = model.config.num_frames
        self.sampler = sampler or model.config.sampler  # an unknown sampler fails here, not per video
        self.batch = batch
        # Each worker's decoder gets its share of the cores: frame threads beyond that only
        # contend with the other workers and the backend.
        self.decode_threads = max(1, (os.cpu_count() or 1) // self.workers)
        self.max_analysis_frames = max_analysis_frames
        self.batch_timeout_s = batch_timeout_s
        self.strict = strict
        self.limits = limits or DecodeLimits()
        self.source = self._frame_source(decoder)

    @property
    def sampler(self) -> str:
        return self._sampler.name

    @sampler.setter
    def sampler(self, name: str) -> None:
        self._sampler = check_sampler(name, self.num_frames)  # one it cannot feed the model fails here, not per video

    def _frame_source(self, decoder: str) -> HostSource:
        """``host`` (PyAV → numpy), ``device`` (frames stay on the backend's device), or ``auto``:
        the device path where DALI and cuda-python serve a CUDA backend, else the host path."""
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        self.decoder_reason = None
        if decoder == "auto":
            self.decoder_reason = device_path_unavailable(self.backend.device, self.preprocessing)
            decoder = "host" if self.decoder_reason else "device"
        common = dict(max_analysis_frames=self.max_analysis_frames, threads=self.decode_threads,
                      preprocessing=self.preprocessing, limits=self.limits)  # DeviceSource refuses all but fast
        if decoder == "device":
            return DeviceSource(self.image_size, self.num_frames, device=self.backend.device, **common)
        return HostSource(self.image_size, self.num_frames, **common)

    @property
    def needs_motion(self) -> bool:
        """False for samplers that ignore motion: only their picks are decoded (by seeking)."""
        return self._sampler.needs_motion

    # -- stages ------------------------------------------------------------------------------
    def sample(self, source: str | Path, cancel: threading.Event | None = None) -> SampledVideo:
        """Decode and sample one file (raises ``VideoError``), through the engine's frame source;
        a set ``cancel`` stops it between packets (``cancelled``)."""
        return sample_video(self.source, self._sampler, source, strict=self.strict, cancel=cancel)

    def sample_frames(self, frames: np.ndarray, name: str = "<frames>", times: np.ndarray | None = None) -> SampledVideo:
        """Sample from frames already decoded at model size (uint8 ``[N, H, W, 3]``)."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[1:] != (*self.image_size, 3) or frames.dtype != np.uint8:
            raise ValueError(f"expected uint8 frames [N, {self.image_size[0]}, {self.image_size[1]}, 3], got {frames.dtype} {frames.shape}")
        t0 = time.perf_counter()
        if self.needs_motion:  # motion of the analysis candidates, picks among them
            cand = candidate_indices(len(frames), self.max_analysis_frames)
            picked = frame_indices(len(frames), self._sampler, self.num_frames, frame_mse(frames[cand]),
                                   candidates=cand, seed=SAMPLER_SEED)
        else:  # picks among all the frames
            picked = frame_indices(len(frames), self._sampler, self.num_frames, seed=SAMPLER_SEED)
        t = np.arange(len(frames), dtype=np.float64) if times is None else np.asarray(times, dtype=np.float64)
        return SampledVideo(name, np.ascontiguousarray(frames[picked]), picked, t[picked], None,
                            {"motion": (time.perf_counter() - t0) * 1e3})

    def _sample_safe(self, source) -> SampledVideo | VideoResult:
        return sample_safely(self.source, self._sampler, source, strict=self.strict)

    def run_batch(self, videos: list[SampledVideo]) -> list[VideoResult]:
        """One backend call over sampled videos. A video whose score, levels or MOS come out NaN or
        infinite (an FP16 overflow, broken weights) gets the ``non_finite_output`` error instead: no
        record holds a number JSON cannot, and the batch's other videos keep their scores."""
        if not videos:
            return []
        t0 = time.perf_counter()
        sims, scores = self.backend.run(stack_frames(videos))
        model_ms = (time.perf_counter() - t0) * 1e3
        mos = calibrated_mos(scores, self.calibration) if self.calibration else None
        results = []
        for i, v in enumerate(videos):
            timing_ms = v.timing_ms | {"model": model_ms / len(videos), "batch_size": len(videos)}
            score, video_mos = float(scores[i]), None if mos is None else float(mos[i])
            levels = {level: float(s) for level, s in zip(self.levels, sims[i])}
            if not_finite := self._non_finite_outputs(score, levels, video_mos):
                message = f"{self.backend.label} gave non-finite output for this video ({not_finite})"
                results.append(error_result(v.input, NonFiniteOutputError(message), timing_ms))
                continue
            results.append(
                VideoResult(
                    input=v.input,
                    score=score,
                    mos=video_mos,
                    levels=levels,
                    frames=[int(x) for x in v.indices],
                    frame_times=[round(float(x), 6) for x in v.times],
                    video=v.video,
                    backend=self.backend.label,
                    warnings=v.warnings,
                    timing_ms=timing_ms,
                )
            )
        return results

    @staticmethod
    def _non_finite_outputs(score: float, levels: dict[str, float], mos: float | None) -> str:
        """The outputs of one video that are NaN or infinite, with their values ("" when none)."""
        outputs = {"score": score, **{f"levels.{name}": s for name, s in levels.items()}, "mos": mos}
        return ", ".join(f"{name} {value}" for name, value in outputs.items()
                         if value is not None and not np.isfinite(value))

    # -- the pipeline ----------------------------------------------------------------------------
    def score(self, inputs: Iterable[str | Path]) -> Iterator[VideoResult]:
        """Results for ``inputs``, in order, one each; decoding runs ahead in worker threads."""
        sources = iter(inputs)
        in_flight = self.batch + 2 * self.workers
        pending: deque = deque()  # decode futures, in input order

        with ThreadPoolExecutor(self.workers, thread_name_prefix="qclip-decode") as pool:

            def take(timeout: float | None) -> SampledVideo | VideoResult:
                """The next input's decode, in input order (``batching.next_batch``'s source)."""
                while len(pending) < in_flight and (source := next(sources, None)) is not None:
                    pending.append(pool.submit(self._sample_safe, source))
                if not pending:
                    raise Closed
                waited = time.perf_counter()
                item = pending[0].result(timeout)  # TimeoutError: not decoded in time, left in place
                pending.popleft()
                if isinstance(item, SampledVideo):
                    item.timing_ms["wait"] = (time.perf_counter() - waited) * 1e3
                return item

            # Error results ride along with the videos (in order) but do not fill a batch; a batch
            # grows while decodes keep arriving within batch_timeout_s of each other (throughput).
            while batch := next_batch(take, max_items=self.batch, max_wait_s=self.batch_timeout_s,
                                      counts=lambda item: isinstance(item, SampledVideo), wait="gap"):
                yield from self._score_in_order(batch)

    def _score_in_order(self, items: list[SampledVideo | VideoResult]) -> Iterator[VideoResult]:
        """One backend call over the sampled videos among ``items``; results in ``items``' order."""
        videos = [item for item in items if isinstance(item, SampledVideo)]
        try:
            scored = iter(self.run_batch(videos))
        except Exception as exc:  # the backend failed on this batch: each of its inputs says so
            scored = iter([error_result(v.input, exc) for v in videos])
        for item in items:
            yield next(scored) if isinstance(item, SampledVideo) else item

    def score_one(self, source: str | Path) -> VideoResult:
        return next(self.score([source]))
