"""Frame sources: one file → the frames the model sees, with their indices, times and ``VideoInfo``.

The engine asks a source for each input (``source.sample(path)``); the two sources return the
same indices and times for the same file, and frames with the same values, in different places:

* :class:`HostSource` — PyAV decodes on the CPU, frames are numpy arrays; motion is the numpy
  reference. What the engine runs on the CPU, and in front of a GPU backend without DALI.
* :class:`DeviceSource` — frames stay on ``device`` from the decoder to the backend: on CUDA,
  NVDEC through DALI (``video/decode_dali.py``; per file it falls back to PyAV exactly as that
  module decides, then copies the frames up once), motion by the CUDA kernel
  (``video/motion.py``), the sampler on the host on ``m`` alone, and the picked frames gathered
  on the device. On the CPU (``device="cpu"``: CI, the stand-in of the GPU path) PyAV decodes
  into torch CPU tensors and the same source, gather and backend code runs (motion through
  ``video/motion.py``'s torch path rather than the CUDA kernel: the same values).

Frame choice is the training pipeline's (``sampling.frame_indices``): samplers that ignore motion
(``needs_motion`` false) pick among all the video's frames and only their picks are decoded;
the others decode the candidates (at most ``max_analysis_frames``, at a uniform stride), take
their motion ``m`` and pick among them. ``SampledFrames.decoder`` says which
decoder ran (``pyav`` | ``dali``), ``fallback`` why DALI did not.

Preprocessing (``defaults.PREPROCESSINGS``, the model's ``config.preprocessing``): the host source
makes every frame — candidates included, since the model's frames are picked from them — as
``container.to_rgb`` does for that name. The device path gives ``fast`` frames only:
:func:`device_path_unavailable` sends ``auto`` to the host for ``reference``,
``short_side_crop``, ``mmcv_short_side_crop`` and ``fragments``, and a :class:`DeviceSource`
refuses them.

:func:`to_host` is the one door from device frames to a numpy array, and it counts
(:func:`host_copy_count`): the engine's device path never opens it, and a test proves it.

Limits (``video/limits.py``): a source holds the engine's :class:`DecodeLimits` and, when they
set ``budget_pixels``, the one :class:`PixelBudget` its decode threads share; each ``sample``
decodes under a :class:`Work` of its own (the scan and the decode of that input), which a
``cancel`` event stops between packets.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..defaults import DECODERS, MAX_ANALYSIS_FRAMES, PREPROCESSING, PREPROCESSINGS, SAMPLER_SEED
from . import decode
from .limits import DecodeLimits, PixelBudget, Work
from .motion import frame_motion
from .sampling import Sampler, frame_indices

__all__ = ["DECODERS", "HostSource", "DeviceSource", "SampledFrames", "to_host", "host_copy_count",
           "device_path_unavailable", "device_preprocessing_unsupported"]
_copies = 0
_copies_lock = threading.Lock()  # decode threads and the model thread may call to_host


def to_host(frames) -> np.ndarray:
    """Frames as a numpy array; a torch tensor's copy to the host is counted (``host_copy_count``)."""
    global _copies
    if isinstance(frames, np.ndarray) or not hasattr(frames, "numpy"):
        return np.asarray(frames)
    with _copies_lock:
        _copies += 1
    return frames.numpy(force=True)


def host_copy_count() -> int:
    """How many times device frames were copied to the host (by :func:`to_host`) in this process."""
    return _copies


@dataclass
class SampledFrames:
    frames: Any  # uint8 [K, H, W, 3] at model size: numpy (host) or a torch tensor (device)
    indices: np.ndarray  # int64 [K]: frame-table indices, display order
    times: np.ndarray  # float64 [K]: seconds from the first frame
    info: decode.VideoInfo
    decoder: str  # "pyav" | "dali"
    timing: dict[str, float] = field(default_factory=dict)  # seconds: probe, decode, motion
    fallback: str | None = None  # why DALI did not decode this file (device path)
    ready: Any = None  # CUDA: an event after which ``frames`` are complete (the consumer's stream waits on it)


class HostSource:
    """PyAV on the CPU; frames as numpy arrays."""

    name = "host"

    def __init__(self, size: tuple[int, int], num_frames: int, *, max_analysis_frames: int = MAX_ANALYSIS_FRAMES,
                 threads: int = 0, preprocessing: str = PREPROCESSING, limits: DecodeLimits | None = None):
        if preprocessing not in PREPROCESSINGS:
            raise ValueError(f"preprocessing must be one of {PREPROCESSINGS}, got {preprocessing!r}")
        self.size, self.num_frames = tuple(size), num_frames
        self.max_analysis_frames, self.threads = max_analysis_frames, threads
        self.preprocessing = preprocessing  # how decoded frames reach model size (container.to_rgb)
        self.limits = limits or DecodeLimits()
        self.budget = PixelBudget(self.limits.budget_pixels) if self.limits.budget_pixels else None

    def sample(self, path: str | Path, sampler: Sampler, *, strict: bool = False,
               cancel: threading.Event | None = None) -> SampledFrames:
        """The frames ``sampler`` picks of ``path`` (raises the ``VideoError`` of a bad file), within
        the source's limits; a set ``cancel`` stops the decode (``cancelled``)."""
        with Work(self.limits, cancel=cancel, budget=self.budget, where=str(path)) as work:
            return self._sample(path, sampler, strict, work)

    def _sample(self, path, sampler: Sampler, strict: bool, work: Work) -> SampledFrames:
        t0 = time.perf_counter()
        info, table = decode.scan(path, work)
        if strict:
            info.require_complete()
        t1 = time.perf_counter()
        if not sampler.needs_motion:  # picks among all frames; decode only those (by seeking where the file allows)
            indices = frame_indices(info.frame_count, sampler, self.num_frames, seed=SAMPLER_SEED)
            frames, decoder, fallback = self._decode_picked(path, indices, work)
            times = table.times(indices)
            t2 = t3 = time.perf_counter()
        else:  # the analysis candidates (those the decoder produced), their motion, the picks among them
            frames, cand, times, decoder, fallback = self._candidates(path, work)
            t2 = time.perf_counter()
            indices = frame_indices(info.frame_count, sampler, self.num_frames, frame_motion(frames), candidates=cand,
                                    seed=SAMPLER_SEED)
            picked = np.searchsorted(cand, indices)  # candidates are sorted and distinct
            frames, times = self._gather(frames, picked), times[picked]
            t3 = time.perf_counter()
        return SampledFrames(frames, indices, times, info, decoder,
                             {"probe": t1 - t0, "decode": t2 - t1, "motion": t3 - t2}, fallback)

    # -- where the frames are: what DeviceSource changes ----------------------------------------
    def _decode_picked(self, path, indices: np.ndarray, work: Work):
        frames = decode.decode_frames(path, self.size, indices=indices, threads=self.threads,
                                      preprocessing=self.preprocessing, work=work)
        return np.ascontiguousarray(frames), "pyav", None

    def _candidates(self, path, work: Work):
        # The model's frames are picked from the candidates, so they carry its preprocessing too.
        c = decode.decode_candidates(path, self.size, max_frames=self.max_analysis_frames, threads=self.threads,
                                     preprocessing=self.preprocessing, work=work)
        return c.frames, c.indices, c.times, "pyav", None

    @staticmethod
    def _gather(frames, picked: np.ndarray):
        return np.ascontiguousarray(frames[picked])


class DeviceSource(HostSource):
    """Frames as torch tensors on ``device`` from the decoder to the backend (module docstring)."""

    name = "device"

    def __init__(self, size, num_frames, *, device: str = "cuda", dali: str = "auto", **kwargs):
        super().__init__(size, num_frames, **kwargs)
        if (why := device_preprocessing_unsupported(self.preprocessing)) is not None:
            raise ValueError(f"decoder='device' cannot give this model's frames: {why}; use decoder='host' or 'auto'")
        import torch

        self.device = torch.device(device)
        self.dali = dali  # decode_dali's backend choice: auto | dali | pyav
        self._local = threading.local()  # one CUDA stream per decode thread

    def sample(self, path: str | Path, sampler: Sampler, *, strict: bool = False,
               cancel: threading.Event | None = None) -> SampledFrames:
        """As the host source; on CUDA each decode thread works on its own stream, so decode, motion
        and gather of the next videos overlap the model's batch on torch's stream, and the result
        carries the event the model's stream waits on."""
        if self.device.type != "cuda":
            return super().sample(path, sampler, strict=strict, cancel=cancel)
        import torch

        stream = getattr(self._local, "stream", None)
        if stream is None:
            stream = self._local.stream = torch.cuda.Stream(device=self.device)
        with torch.cuda.stream(stream):
            sampled = super().sample(path, sampler, strict=strict, cancel=cancel)
            sampled.ready = torch.cuda.Event()
            sampled.ready.record(stream)
        return sampled

    def _decode_picked(self, path, indices, work: Work):
        import torch

        if self.device.type == "cuda":  # the scan before it took the limits' checks (size, frames)
            from .decode_dali import decode_frames_gpu_detailed

            return decode_frames_gpu_detailed(path, self.size, indices, device_id=self._index(), backend=self.dali)
        frames = decode.decode_frames(path, self.size, indices=indices, threads=self.threads, work=work)
        return torch.from_numpy(frames).to(self.device), "pyav", None

    def _candidates(self, path, work: Work):
        import torch

        if self.device.type == "cuda":
            from .decode_dali import decode_candidates_gpu

            c = decode_candidates_gpu(path, self.size, max_frames=self.max_analysis_frames, device_id=self._index(),
                                      backend=self.dali)
            return c.frames, c.indices, c.times, c.backend, c.fallback_reason
        c = decode.decode_candidates(path, self.size, max_frames=self.max_analysis_frames, threads=self.threads,
                                     work=work)
        return torch.from_numpy(c.frames).to(self.device), c.indices, c.times, "pyav", None

    def _gather(self, frames, picked: np.ndarray):
        import torch

        return frames.index_select(0, torch.as_tensor(picked, dtype=torch.long, device=frames.device)).contiguous()

    def _index(self) -> int:
        import torch

        return self.device.index if self.device.index is not None else torch.cuda.current_device()


def device_preprocessing_unsupported(preprocessing: str) -> str | None:
    """Why the device path cannot make frames by ``preprocessing`` (None: it can). DALI resizes on
    the GPU with its own filter (``video/decode_dali.py``); the other resizes, and the fragments'
    native-resolution cuts, run on the host."""
    if preprocessing == "fast":
        return None
    if preprocessing in ("fragments", "fragments_and_crop"):
        return (f"the {preprocessing!r} preprocessing cuts its cells from the native-size frame on the host, "
                "which the device path (DALI's GPU resize to model size) cannot give")
    how = ("the released CLIPVQA transform's bilinear" if preprocessing == "mmcv_short_side_crop"
           else "PIL's bilinear filter")
    return (f"the {preprocessing!r} preprocessing resizes with {how} on the host, "
            "which the device path (DALI's GPU resize, no crop) cannot reproduce")


def device_path_unavailable(device: str, preprocessing: str = PREPROCESSING) -> str | None:
    """Why ``decoder="auto"`` takes the host path for a backend on ``device`` whose model wants
    ``preprocessing`` (None: the device path)."""
    if (why := device_preprocessing_unsupported(preprocessing)) is not None:
        return why
    if not device.startswith("cuda"):
        return "the backend runs on the CPU"
    from .decode_dali import why_unavailable
    from .motion import kernel_available

    reason = why_unavailable()
    if reason:
        return reason
    return None if kernel_available() else "cuda-python is not installed (the motion kernel needs it)"
