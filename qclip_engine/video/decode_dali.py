"""GPU video decoding: NVDEC through NVIDIA DALI, GPU resize, frames handed to torch by DLPack.

The GPU twin of :mod:`qclip_engine.video.decode`: the same candidate indices, the same
times, the same ``VideoInfo``, frames as a uint8 RGB CUDA tensor ``[N, H, W, 3]`` at the
model size instead of a numpy array. Nothing goes through host memory on the DALI path:
NVDEC decodes into GPU memory, DALI converts to RGB and resizes on the GPU, and the
result reaches torch through DLPack.

How a file is decoded
    1. ``decode.scan(path)`` on the host (packets only, plus the first frame): the frame
       table, ``VideoInfo``, the rotation and the VFR flag. Bad files raise the same typed
       ``VideoError`` as the CPU path, before any GPU work.
    2. The first frame's pixel format and colour matrix are read with PyAV (one frame).
    3. ``fn.experimental.inputs.video`` (mixed backend = NVDEC) streams the encoded file in
       sequences of ``seq`` frames, one pipeline run per sequence; ``fn.resize`` (bilinear
       with antialiasing, squash to ``size``, float output) shrinks each sequence on the
       GPU; only the wanted frames of each sequence are kept. GPU memory is bounded by one
       sequence at full resolution (``CHUNK_BYTES``) plus the kept frames at model size,
       whatever the video's length, and the file is decoded once, front to back.
    4. DALI's NVDEC path converts YUV to RGB with the BT.601 matrix always (limited range,
       or full range when the bitstream says so); PyAV/swscale use the matrix the stream
       is tagged with (BT.709 for most HD video). A 3×3 correction
       ``M_tagged · M_601⁻¹`` on the resized float RGB makes the two agree (linear, so it
       commutes with the resize); then round, clamp, uint8; then ``torch.rot90`` for
       rotated (portrait phone) video, as ``decode.to_rgb`` does on the CPU.

Frame identity. The CPU path matches decoded frames to the frame table by timestamp;
DALI's streaming decoder numbers frames in display order as it outputs them. The two
agree when every packet yields one frame; the number of frames DALI delivers is checked
against the frame table (the sequence length is chosen so that the last sequence is
partial, which makes a surplus visible too), and any disagreement falls back to PyAV.

Why DALI's ``decoders.video(frames=...)`` is not used: in DALI 2.4 it decodes from the
start of the file up to the requested frames on every call (measured: time grows
linearly with the index of the first frame asked for), so decoding 512 candidates in
memory-bounded chunks would decode the file once per chunk; the stream decodes it once.

Fallback to PyAV (decode on the CPU, then ``.to(device)``), recorded in
``CandidatesGPU.backend`` / ``fallback_reason``, when:
    - DALI or NVDEC is unavailable (:func:`why_unavailable`);
    - the codec is not one of ``NVDEC_CODECS`` (H.264, HEVC, VP9 — the engine's GPU codecs; AV1,
      MPEG-4, VP8, MJPEG, FFV1, … use PyAV), or the frame is below NVDEC's minimum size;
    - the pixel format is not 8-bit 4:2:0, the coded size is odd, or the colour matrix
      is one swscale and the correction above do not share (YCgCo, RGB, …);
    - the file is VFR (``info.vfr``) or has dropped frames (``info.dropped_frames``): DALI
      documents its video readers as CFR-only;
    - an edit list hides frames (``FrameTable.hidden``: an MP4 cut by stream copy): the frame
      table holds only the frames FFmpeg presents, and DALI's output order would count the
      hidden pre-roll too (``video/scan.py``);
    - DALI raises, or its frame count disagrees with the frame table.
``backend="dali"`` turns every fallback into a :class:`DaliDecodeError` (tests,
debugging); ``backend="pyav"`` always uses PyAV.

Importing this module needs neither DALI nor a GPU: DALI is imported inside functions.
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import decode
from .decode import DEFAULT_MAX_ANALYSIS_FRAMES, VideoInfo

log = logging.getLogger(__name__)

__all__ = [
    "CandidatesGPU",
    "DaliDecodeError",
    "NVDEC_CODECS",
    "available",
    "why_unavailable",
    "gpu_unsupported_reason",
    "decode_candidates_gpu",
    "decode_frames_gpu",
    "decode_frames_gpu_detailed",
]

# Codecs decoded on NVDEC (FFmpeg codec names, as ``VideoInfo.codec``). DALI also drives
# NVDEC for AV1, MPEG-4, VP8 and MJPEG; those stay on PyAV until they are tested on a GPU.
NVDEC_CODECS = frozenset({"h264", "hevc", "vp9"})
# NVDEC's smallest coded frame per codec (width, height), from cuvidGetDecoderCaps.
NVDEC_MIN_SIZE = {"h264": (48, 16), "hevc": (144, 144), "vp9": (128, 128)}
# 8-bit 4:2:0: what DALI's NV12 → RGB kernel reads.
GPU_PIXEL_FORMATS = frozenset({"yuv420p", "yuvj420p", "nv12"})
# (Kr, Kb) of the YUV → RGB matrices, keyed by FFmpeg's AVColorSpace; unspecified (2) and
# reserved (3) are BT.601 in swscale, as in DALI.
_KR_KB = {
    1: (0.2126, 0.0722),  # BT.709
    2: (0.299, 0.114),  # unspecified → swscale's default, BT.601
    3: (0.299, 0.114),  # reserved → BT.601
    4: (0.30, 0.11),  # FCC
    5: (0.299, 0.114),  # BT.470BG (BT.601 625)
    6: (0.299, 0.114),  # SMPTE 170M (BT.601 525)
    7: (0.212, 0.087),  # SMPTE 240M
    9: (0.2627, 0.0593),  # BT.2020 non-constant luminance
    10: (0.2627, 0.0593),  # BT.2020 constant luminance: swscale uses the NCL matrix
}
_BT601 = (0.299, 0.114)
# Decoder names PyAV may report for a codec (``VideoInfo.codec`` is the decoder's name).
_CODEC_ALIASES = {"libvpx-vp9": "vp9", "libdav1d": "av1", "libaom-av1": "av1"}

# GPU memory for one decoded sequence at full resolution (RGB uint8); the sequence length
# is this divided by the frame size, rounded down to a power of two in [MIN, MAX].
CHUNK_BYTES = 512 << 20
MIN_CHUNK_FRAMES = 8
MAX_CHUNK_FRAMES = 128
# Pipelines kept per thread (each holds DALI's buffers for one sequence).
PIPELINE_CACHE = 4
_NUM_THREADS = 2
_INPUT_NAME = "encoded"
_NVCUVID = "libnvcuvid.so.1"

BACKENDS = ("auto", "dali", "pyav")


class DaliDecodeError(RuntimeError):
    """``backend="dali"`` was asked for and DALI could not (or must not) decode the file."""


@dataclass
class CandidatesGPU:
    """``decode.Candidates`` on the GPU: the analysis frames of one video, in time order."""

    frames: torch.Tensor  # uint8 [N, H, W, 3] on a CUDA device
    indices: np.ndarray  # int64 [N]: frame-table index of each candidate
    times: np.ndarray  # float64 [N]: seconds from the first frame
    info: VideoInfo
    backend: str  # "dali" | "pyav": which decoder produced the frames
    fallback_reason: str | None = None  # why PyAV was used (None on the DALI path)


# -- availability ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _dali_import_error() -> str | None:
    try:
        importlib.import_module("nvidia.dali")
    except Exception as exc:  # ImportError, or a broken install raising anything else
        return f"NVIDIA DALI is not installed ({type(exc).__name__}: {exc}); pip install nvidia-dali-cuda130"
    return None


@functools.lru_cache(maxsize=1)
def _unavailable_reason() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    reason = _dali_import_error()
    if reason:
        return reason
    try:
        ctypes.CDLL(_NVCUVID)
    except OSError as exc:
        return f"NVDEC library {_NVCUVID} cannot be loaded ({exc}); the driver lacks video decode support"
    return None


def available() -> bool:
    """True when DALI imports, a CUDA device exists and NVDEC's library loads."""
    return _unavailable_reason() is None


def why_unavailable() -> str:
    """One line saying why the DALI path is unavailable; empty when it is available."""
    return _unavailable_reason() or ""


# -- what DALI may decode ---------------------------------------------------------------------
@dataclass(frozen=True)
class _FrameFormat:
    pix_fmt: str
    colorspace: int  # AVColorSpace
    color_range: int  # AVColorRange


def _frame_format(path: str | Path) -> _FrameFormat | None:
    """Pixel format and colour tags of the first decoded frame (what swscale converts from)."""
    import av

    try:
        with av.open(str(path), mode="r", metadata_errors="ignore") as container:
            frame = next(container.decode(video=0), None)
            if frame is None:
                return None
            return _FrameFormat(frame.format.name, int(frame.colorspace), int(frame.color_range))
    except (av.error.FFmpegError, StopIteration, ValueError):
        return None


def _coded_size(info: VideoInfo) -> tuple[int, int]:
    """(height, width) as stored, before the display rotation."""
    return (info.width, info.height) if info.rotation in (90, 270) else (info.height, info.width)


def gpu_unsupported_reason(info: VideoInfo, fmt: _FrameFormat | None = None) -> str | None:
    """Why this video must take the PyAV path (None: DALI/NVDEC can decode it)."""
    codec = _CODEC_ALIASES.get(info.codec, info.codec)
    if codec not in NVDEC_CODECS:
        return f"codec {info.codec!r} is not decoded on NVDEC here (GPU codecs: {', '.join(sorted(NVDEC_CODECS))})"
    if info.vfr:
        return "variable frame rate video (DALI's video decoding assumes a constant frame rate)"
    if info.dropped_frames:
        return f"{info.dropped_frames} dropped frames (DALI's video decoding assumes no gaps in the frame rate)"
    if info.hflip:
        return "a mirrored display matrix (the GPU path applies rotations only)"
    h, w = _coded_size(info)
    min_w, min_h = NVDEC_MIN_SIZE.get(codec, (1, 1))
    if w < min_w or h < min_h:
        return f"{w}x{h} is below NVDEC's minimum {min_w}x{min_h} for {codec}"
    if w % 2 or h % 2:
        return f"odd coded size {w}x{h} (4:2:0 NVDEC output needs even sizes)"
    if fmt is not None:
        if fmt.pix_fmt not in GPU_PIXEL_FORMATS:
            return f"pixel format {fmt.pix_fmt} (the GPU path takes 8-bit 4:2:0 only)"
        if fmt.colorspace not in _KR_KB:
            return f"colour matrix {fmt.colorspace} (AVColorSpace) has no GPU conversion here"
    return None


# -- colour -----------------------------------------------------------------------------------
def _yuv_to_rgb_matrix(kr: float, kb: float) -> np.ndarray:
    """RGB = M · (Y', Cb', Cr') for normalised luma/chroma (the range scaling cancels below)."""
    kg = 1.0 - kr - kb
    return np.array(
        [
            [1.0, 0.0, 2.0 * (1.0 - kr)],
            [1.0, -2.0 * kb * (1.0 - kb) / kg, -2.0 * kr * (1.0 - kr) / kg],
            [1.0, 2.0 * (1.0 - kb), 0.0],
        ]
    )


def color_correction(colorspace: int) -> np.ndarray | None:
    """3×3 matrix taking DALI's BT.601 RGB to the RGB of the tagged matrix (None: identity).

    DALI computes ``RGB₆₀₁ = M₆₀₁ · yuv``; swscale computes ``RGB = M_tag · yuv`` with the
    same range handling, so ``RGB = M_tag · M₆₀₁⁻¹ · RGB₆₀₁`` (up to DALI's clamping of
    out-of-gamut values and its uint8 rounding before the resize).
    """
    kr_kb = _KR_KB.get(colorspace, _BT601)
    if kr_kb == _BT601:
        return None
    return _yuv_to_rgb_matrix(*kr_kb) @ np.linalg.inv(_yuv_to_rgb_matrix(*_BT601))


def _finish(frames: torch.Tensor, correction: torch.Tensor | None) -> torch.Tensor:
    """Resized float RGB ``[..., 3]`` → uint8, after the colour correction."""
    if correction is not None:
        frames = frames @ correction.T
    return frames.round_().clamp_(0, 255).to(torch.uint8)


# -- DALI pipelines -----------------------------------------------------------------------------
class _Mismatch(RuntimeError):
    """DALI's frames do not line up with the frame table."""


def chunk_frames(coded_hw: tuple[int, int], budget: int | None = None) -> int:
    """Frames per decoded sequence: the budget over the RGB frame size, a power of two, clamped."""
    per_frame = max(1, coded_hw[0] * coded_hw[1] * 3)
    n = max(1, (CHUNK_BYTES if budget is None else budget) // per_frame)
    n = 1 << (int(n).bit_length() - 1)
    return int(min(max(n, MIN_CHUNK_FRAMES), MAX_CHUNK_FRAMES))


def sequence_length(frame_count: int, chunk: int) -> tuple[int, bool]:
    """``(seq, checked)``: a sequence length near ``chunk`` that does not divide ``frame_count``.

    With a partial last sequence, a DALI frame count above the table's shows as a full
    last sequence, and one below as a short sequence or an error: both are caught.
    ``checked`` is False when every candidate divides the count (then a surplus would
    stay unseen, so the pipeline is not reused).
    """
    for seq in range(chunk, max(chunk - 4, 1), -1):
        if frame_count % seq:
            return seq, True
    return chunk, False


class _StreamPipeline:
    """``inputs.video`` (NVDEC) → ``resize`` (float) for one (device, output size, sequence length)."""

    def __init__(self, device_id: int | None, out_hw: tuple[int, int], seq: int, cpu: bool = False):
        from nvidia.dali import Pipeline, fn, types

        self.seq = seq
        self.cpu = cpu
        self.broken = False
        pipe = Pipeline(
            batch_size=1,
            num_threads=_NUM_THREADS,
            device_id=None if cpu else device_id,
            prefetch_queue_depth=1,  # run exactly the iterations asked for: no run-ahead
            exec_dynamic=True,  # outputs stay valid while referenced (DLPack hand-over)
        )
        video_args = {"device": "cpu"} if cpu else {"device": "mixed", "affine": False}
        with pipe:
            video = fn.experimental.inputs.video(
                name=_INPUT_NAME,
                sequence_length=seq,
                last_sequence_policy="partial",
                **video_args,
            )
            frames = fn.resize(
                video,
                resize_x=out_hw[1],
                resize_y=out_hw[0],
                interp_type=types.INTERP_LINEAR,
                antialias=True,  # swscale's BILINEAR widens its filter when shrinking too
                dtype=types.FLOAT,  # no rounding before the colour correction
            )
            pipe.set_outputs(frames)
        pipe.build()
        self.pipe = pipe

    def stream(self, data: np.ndarray, frame_count: int, device: torch.device):
        """Yield ``(first_index, frames)`` per sequence: frames float ``[F, h, w, 3]`` (torch).

        Each chunk must be used (and, on the GPU, its work finished) before the next is
        asked for: its memory belongs to DALI. Every run the frame table predicts is made
        and checked; a short or long sequence raises ``_Mismatch``.
        """
        self.pipe.feed_input(_INPUT_NAME, [data])
        runs = -(-frame_count // self.seq)
        start = 0
        for run in range(runs):
            expected = self.seq if run < runs - 1 else frame_count - start
            (out,) = self.pipe.run()
            tensor = out.as_tensor()  # [1, F, h, w, 3], a view of `out`
            frames = _from_dali(tensor, device)[0]
            got = int(frames.shape[0])
            if got != expected:
                raise _Mismatch(
                    f"DALI returned {got} frames for sequence {run} where the frame table has {expected} "
                    f"({frame_count} frames in all)"
                )
            yield start, frames
            del frames, tensor, out
            start += got


def _from_dali(tensor, device: torch.device) -> torch.Tensor:
    """A DALI tensor as a torch tensor sharing its memory (DLPack), ordered before torch's stream.

    The capsule is asked for with torch's current stream, so DALI makes that stream wait
    for the pipeline's work (0 is not a valid DLPack stream: the legacy default is 1).
    """
    if device.type == "cuda":
        stream = torch.cuda.current_stream(device).cuda_stream
        capsule = tensor.__dlpack__(stream=stream if stream else 1)
    else:
        capsule = tensor.__dlpack__()
    return torch.from_dlpack(capsule)


_local = threading.local()


def _pipeline(device_id: int | None, out_hw: tuple[int, int], seq: int, cpu: bool) -> _StreamPipeline:
    cache: OrderedDict = getattr(_local, "pipelines", None)
    if cache is None:
        cache = _local.pipelines = OrderedDict()
    key = (device_id, out_hw, seq, cpu)
    pipe = cache.get(key)
    if pipe is None or pipe.broken:
        pipe = cache[key] = _StreamPipeline(device_id, out_hw, seq, cpu)
        while len(cache) > PIPELINE_CACHE:
            cache.popitem(last=False)
    cache.move_to_end(key)
    return pipe


def _drop(pipe: _StreamPipeline) -> None:
    pipe.broken = True
    cache = getattr(_local, "pipelines", None)
    if cache:
        for key in [k for k, v in cache.items() if v is pipe]:
            del cache[key]


def _dali_decode(
    path: str | Path,
    info: VideoInfo,
    size: tuple[int, int],
    wanted: np.ndarray,
    fmt: _FrameFormat,
    device: torch.device,
    *,
    chunk_bytes: int | None = None,
) -> torch.Tensor:
    """Frames ``wanted`` (sorted, unique frame-table indices) as uint8 ``[K, H, W, 3]`` on ``device``.

    ``device`` of type ``cpu`` runs DALI's CPU backend (VP8/VP9/MJPEG only; a way to check
    the plumbing without a GPU); ``cuda`` runs NVDEC (mixed backend).
    """
    cpu = device.type == "cpu"
    rotation = info.rotation
    out_hw = (size[1], size[0]) if rotation in (90, 270) else tuple(size)  # resize in coded orientation
    budget = CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    seq, checked = sequence_length(info.frame_count, chunk_frames(_coded_size(info), budget))
    data = np.fromfile(str(path), dtype=np.uint8)
    matrix = color_correction(fmt.colorspace)
    correction = None if matrix is None else torch.as_tensor(matrix, dtype=torch.float32, device=device)
    out = torch.empty((len(wanted), *out_hw, 3), dtype=torch.uint8, device=device)
    pipe = _pipeline(None if cpu else device.index, out_hw, seq, cpu)
    done = 0
    finished = False
    try:
        for start, frames in pipe.stream(data, info.frame_count, device):
            stop = int(np.searchsorted(wanted, start + frames.shape[0]))
            if stop > done:
                local = torch.as_tensor(wanted[done:stop] - start, dtype=torch.long, device=frames.device)
                out[done:stop] = _finish(frames.index_select(0, local), correction)
                done = stop
            if not cpu:
                # The chunk's memory goes back to DALI on the next run: finish reading it first.
                torch.cuda.current_stream(device).synchronize()
        finished = True
    finally:
        if not finished or not checked:
            _drop(pipe)  # mid-stream: DALI still holds the rest of this file
    if done != len(wanted):
        raise _Mismatch(f"DALI delivered {done} of {len(wanted)} wanted frames")
    if rotation:
        out = torch.rot90(out, k=rotation // 90, dims=(1, 2)).contiguous()
    return out


# -- public API -------------------------------------------------------------------------------
def _check_size(size) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be (height, width), got {size!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return h, w


def _cuda_device(device_id: int) -> torch.device:
    if not torch.cuda.is_available():
        raise RuntimeError("decode_*_gpu needs a CUDA device; use qclip_engine.video.decode on the CPU")
    return torch.device("cuda", int(device_id))


def _hidden_frames_reason(table: decode.FrameTable) -> str | None:
    """Why frame-table indices cannot be DALI output positions: frames an edit list hides are
    demuxed and decoded but never presented, so they are not in the table (``video/scan.py``)."""
    if table.hidden:
        return f"an edit list hides {table.hidden} frames (DALI's frame numbering would count them)"
    return None


def _choose(path, info: VideoInfo, table: decode.FrameTable,
            backend: str) -> tuple[_FrameFormat | None, str | None]:
    """``(frame format, reason to use PyAV)``; raises ``DaliDecodeError`` for backend="dali"."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "pyav":
        return None, "backend='pyav' was asked for"
    reason = why_unavailable() or gpu_unsupported_reason(info) or _hidden_frames_reason(table)
    fmt = None
    if reason is None:
        fmt = _frame_format(path)
        reason = "the first frame could not be read with PyAV" if fmt is None else gpu_unsupported_reason(info, fmt)
    if reason is not None and backend == "dali":
        raise DaliDecodeError(f"{Path(path).name}: DALI/NVDEC cannot decode this file: {reason}")
    return fmt, reason


def _summarize(exc: BaseException) -> str:
    """The line of a DALI error that says what went wrong (its message wraps it in pipeline context)."""
    text = str(exc)
    if "encountered:" in text:
        text = text.split("encountered:", 1)[1]
    skip = ("C++ context", "Current pipeline object", "Critical error in pipeline")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith(skip)]
    return lines[0] if lines else type(exc).__name__


def _decode_or_fallback(path, info, size, wanted, fmt, device, backend) -> tuple[torch.Tensor | None, str | None]:
    """The DALI frames, or ``(None, reason)`` when PyAV must take over."""
    try:
        with torch.cuda.device(device):
            return _dali_decode(path, info, size, wanted, fmt, device), None
    except Exception as exc:  # DALI raises RuntimeError for anything from a codec to a driver error
        if backend == "dali":
            raise DaliDecodeError(f"{Path(path).name}: DALI decoding failed: {exc}") from exc
        summary = _summarize(exc)
        log.warning("%s: DALI decoding failed, decoding with PyAV instead: %s", Path(path).name, summary)
        return None, f"DALI failed: {type(exc).__name__}: {summary}"


def decode_candidates_gpu(
    path: str | Path,
    size: tuple[int, int],
    *,
    max_frames: int = DEFAULT_MAX_ANALYSIS_FRAMES,
    device_id: int = 0,
    backend: str = "auto",
) -> CandidatesGPU:
    """The analysis frames of a video on the GPU: ``decode.decode_candidates`` with CUDA frames.

    For samplers that need motion only (``sampling.frame_indices``: motion-free samplers pick
    among all frames and decode their picks with ``decode_frames_gpu``).
    Same indices (``decode.candidate_indices(info.frame_count, max_frames)``), times and
    info as the CPU path; frames uint8 ``[N, H, W, 3]`` on ``cuda:device_id`` at ``size``
    (H, W). Raises the CPU path's ``VideoError`` subclasses for unusable files.
    """
    size = _check_size(size)
    device = _cuda_device(device_id)
    info, table = decode.scan(path)  # typed errors for bad files, before any GPU work
    fmt, reason = _choose(path, info, table, backend)
    if reason is None:
        wanted = decode.candidate_indices(info.frame_count, max_frames)
        frames, reason = _decode_or_fallback(path, info, size, wanted, fmt, device, backend)
        if frames is not None:
            return CandidatesGPU(frames, wanted, table.times(wanted), info, "dali")
    log.debug("%s: PyAV decoding (%s)", Path(path).name, reason)
    cands = decode.decode_candidates(path, size, max_frames=max_frames)
    frames = torch.from_numpy(cands.frames).to(device)
    return CandidatesGPU(frames, cands.indices, cands.times, cands.info, "pyav", reason)


def decode_frames_gpu_detailed(
    path: str | Path,
    size: tuple[int, int],
    indices,
    *,
    device_id: int = 0,
    backend: str = "auto",
) -> tuple[torch.Tensor, str, str | None]:
    """``decode_frames_gpu`` plus the decoder that produced the frames (``dali`` | ``pyav``) and why
    PyAV was used (None on the DALI path)."""
    size = _check_size(size)
    device = _cuda_device(device_id)
    order = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices, dtype=np.int64)
    if order.ndim != 1 or order.size == 0:
        raise ValueError("indices must be a non-empty 1-D sequence of frame indices")
    info, table = decode.scan(path)
    if order.min() < 0 or order.max() >= info.frame_count:
        raise IndexError(f"frame indices must lie in [0, {info.frame_count - 1}], got {order.min()}..{order.max()}")
    fmt, reason = _choose(path, info, table, backend)
    if reason is None:
        targets = np.unique(order)
        frames, reason = _decode_or_fallback(path, info, size, targets, fmt, device, backend)
        if frames is not None:
            pick = torch.as_tensor(np.searchsorted(targets, order), dtype=torch.long, device=device)
            return frames.index_select(0, pick), "dali", None
    log.debug("%s: PyAV decoding (%s)", Path(path).name, reason)
    frames = decode.decode_frames(path, size, order)
    return torch.from_numpy(frames).to(device), "pyav", reason


def decode_frames_gpu(
    path: str | Path,
    size: tuple[int, int],
    indices,
    *,
    device_id: int = 0,
    backend: str = "auto",
) -> torch.Tensor:
    """Frames ``indices`` (any order, repeats allowed) as uint8 ``[K, H, W, 3]`` on the GPU.

    The GPU twin of ``decode.decode_frames(path, size, indices)``. NVDEC cannot seek
    through DALI's stream, so the DALI path decodes the whole file once and keeps the
    wanted frames (memory: one sequence at full size plus K frames at ``size``).
    """
    return decode_frames_gpu_detailed(path, size, indices, device_id=device_id, backend=backend)[0]
