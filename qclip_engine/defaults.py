"""Defaults of the engine, the CLIs and the service, stated once (torch-free: ``--help`` reads them).

Changing a default here changes it for ``QualityEngine``, ``qclip-score``, ``qclip-serve`` and
the service settings alike.
"""

from __future__ import annotations

ENGINES = ("auto", "torch", "onnxruntime", "tensorrt")
DEVICE = "auto"
# auto: on a GPU, FP16; on the CPU, the fastest of the backend × precision pairs this CPU allows
# whose measured score drift is within PRECISION_MIN_SROCC (qclip_engine/runtime/cpu_choice.py).
PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")
PRECISION = "auto"
# How the torch backend runs on a GPU (qclip_engine/runtime/torch_backend.py): eager until the
# fixed-shape modes have run on a GPU in this project's CI.
TORCH_MODES = ("eager", "cuda_graphs", "compile")
TORCH_MODE = "eager"
# Where frames are decoded and kept (qclip_engine/video/frames.py): auto takes the device path for
# a CUDA backend when DALI and cuda-python import.
DECODERS = ("auto", "host", "device")
DECODER = "auto"
# Least SROCC against FP32 scores (on the clips qclip-export --int8 measures) for auto to use a
# reduced precision; one outside its limit is never chosen by auto.
PRECISION_MIN_SROCC = {"bf16": 0.995, "int8": 0.99}
# The PE vision towers' RoPE (qclip_engine/model/backbone.py): "pe" as Meta fixed it, the class token
# unrotated; "qclip_official" the earlier order the official Q-CLIP code trained with. New models: pe.
ROPES = ("pe", "qclip_official")
ROPE = "pe"
# How decoded frames reach model size (qclip_engine/video/container.py: to_rgb; video/resize.py): "fast" converts and
# resizes in one swscale step; "reference" decodes RGB at native size, then resizes with PIL bilinear
# as the official Q-CLIP transform does; "short_side_crop" decodes RGB at native size, resizes its
# short side to short_side_for_crop(model size) with PIL bilinear and takes the centre crop (the
# CLIPVQA transform: 256 then 224; torchvision's rounding); "mmcv_short_side_crop" does the same
# with the released CLIPVQA evaluation transform's rounding (long side to nearest, crop offsets
# down) and non-antialiased bilinear; "fragments" decodes RGB at native size and splices FAST-VQA's
# fragments (qclip_engine/video/fragments.py): the model size split into FRAGMENT_SIZE cells, each
# a FRAGMENT_SIZE square cut at native resolution from the frame's matching cell (centred; frames
# smaller than the model size upscaled first, as the released code does); "fragments_and_crop" makes
# a model size (S, 2S) of both side by side from one decoded frame: the fragments of (S, S) on the
# left, the mmcv_short_side_crop of (S, S) on the right (DVLTA-VQA's two streams). An artifact
# records its own; new Q-CLIP models: fast, new CLIPVQA models: mmcv_short_side_crop.
PREPROCESSINGS = ("fast", "reference", "short_side_crop", "mmcv_short_side_crop", "fragments", "fragments_and_crop")
PREPROCESSING = "fast"
# Those that pack two inputs into one frame: only the family built for them (DVLTA-VQA) takes them.
PACKED_PREPROCESSINGS = ("fragments_and_crop",)
ONE_INPUT_PREPROCESSINGS = tuple(p for p in PREPROCESSINGS if p not in PACKED_PREPROCESSINGS)
# fragments: the side of one cell (FAST-VQA's 32: a 224 model sees 7 × 7 cells); a model size
# for fragments is a multiple of it on both axes.
FRAGMENT_SIZE = 32
# short_side_crop, mmcv_short_side_crop: the short side before the crop is CROP_SHORT_SIDE /
# CROP_SIDE of the crop's (256 for 224, the ratio CLIPVQA's and most ImageNet-style pipelines use).
CROP_SHORT_SIDE, CROP_SIDE = 256, 224
BACKBONE = "PE-Core-L-14-336"  # QCLIPConfig's default; qclip-score's zero-shot model without --artifact

# Batching (qclip_engine.batching): most videos per backend call, and how long a partial
# batch waits after its first video for more. Batch jobs wait longer than the service,
# whose clients wait on every millisecond.
BATCH = 32
BATCH_WAIT_S = 0.05
SERVE_BATCH_WAIT_S = 0.005

MAX_ANALYSIS_FRAMES = 512  # candidate frames decoded for motion analysis, at most

# What one input may cost to decode (qclip_engine/video/limits.py), wherever files are decoded:
# - a picture of more than MAX_PICTURE_PIXELS (coded width × height; 8192 × 8192 admits every 8K
#   and 360° format) is refused before decoding: one 16000 × 16000 H.264 decode takes ~2.6 GB;
# - a video that declares or holds more than MAX_VIDEO_FRAMES frames (about 9 h at 30 fps) is
#   refused: an MP4 sample table of a few bytes can declare millions of samples, which FFmpeg
#   would index (~36 bytes each) before reading any;
# - an input whose decode takes longer than MAX_DECODE_S seconds is given up (0: no limit).
# The service also bounds the pixels being decoded at once (SERVE_DECODE_BUDGET_PICTURES pictures
# of the largest size), so concurrent large decodes cannot add up.
MAX_PICTURE_PIXELS = 8192 * 8192
MAX_VIDEO_FRAMES = 1_000_000
MAX_DECODE_S = 600.0
SERVE_DECODE_BUDGET_PICTURES = 2
SAMPLER_SEED = 0  # scoring is deterministic, the `random` sampler included

# qclip-serve
SERVE_HOST = "127.0.0.1"
SERVE_PORT = 8000
MAX_UPLOAD_MB = 256.0
REQUEST_TIMEOUT_S = 60.0
QUEUE_PER_BATCH = 4  # requests in flight before 503: this × batch, unless --queue says otherwise
# Request bodies (uploads, JSON) are received before a scoring slot is taken, so receives are
# bounded on their own: past MAX_UPLOADS multipart uploads at once, 503 (a JSON path request, a few
# hundred bytes, takes no upload slot). After UPLOAD_GRACE_S a body whose average
# rate since it began is under MIN_UPLOAD_KIBPS (KiB/s; 64 kbit/s, below any real link) is
# dropped with 408: a slow client holds a socket and a temp file for seconds, not the deadline.
MAX_UPLOADS = 128
MIN_UPLOAD_KIBPS = 8.0
UPLOAD_GRACE_S = 10.0
# Per client address (qclip_engine/serve/connections.py, serve/service.py): request headers must be
# complete HEADER_TIMEOUT_S after a connection opens or its last answer (408, closed: a client that
# dribbles a header byte at a time cannot hold a socket); at most MAX_CONNECTIONS_PER_CLIENT open
# connections (more are closed as they arrive) and MAX_RECEIVES_PER_CLIENT request bodies being
# received at once (more: 429), so one address cannot take the sockets or the upload slots of all.
HEADER_TIMEOUT_S = 10.0
MAX_CONNECTIONS_PER_CLIENT = 128
MAX_RECEIVES_PER_CLIENT = 32

# Streaming (qclip_engine.stream.stream_windows, qclip-score --stream)
WINDOW_S = 2.0
HOP_S = 1.0
STREAM_TIMEOUT_S = 10.0


def short_side_for_crop(size: tuple[int, int]) -> int:
    """short_side_crop's resize target for a model size (H, W): 256 for 224 × 224."""
    return min(size) * CROP_SHORT_SIDE // CROP_SIDE


def decode_workers() -> int:
    """Decode threads when none are asked for: min(4, cores)."""
    import os

    return min(4, os.cpu_count() or 1)
