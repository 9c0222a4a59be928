"""Opening a video with PyAV and reading its frames as ffmpeg does: the pieces every reader shares.

Files (``video.decode``) and streams (``qclip_engine.stream``) both open through
:func:`open_video` (typed errors: ``not_found``, ``permission_denied``, ``empty_file``,
``not_a_video``, ``audio_only``, ``unsupported_codec``, ``truncated``, ``format_not_allowed``,
``picture_too_large``, ``too_many_frames``), pick the video stream with :func:`video_stream`
(the one ffmpeg would pick; cover art is not video), read packets through :class:`FrameReader`
(a corrupt packet is skipped, as ffmpeg does) and convert frames with :func:`to_rgb` (swscale, or
RGB at native size then PIL's bilinear resize for the ``reference`` preprocessing, or that resize
of the short side and a centre crop for ``short_side_crop``, or the released CLIPVQA transform's
for ``mmcv_short_side_crop``, or FAST-VQA's fragments cut at native size for ``fragments``
(``video/fragments.py``), or both of the last two side by side for ``fragments_and_crop``); the
whole display matrix applied:
rotation and mirror), so a stream window sees exactly the pixels a file decode gives.

A file is one file. FFmpeg demuxes a file only with the formats of :data:`SINGLE_FILE_FORMATS`
(its ``format_whitelist``, checked on what FFmpeg probes, whatever the name says): formats that
open other files or resources — HLS and DASH playlists, concat lists, image sequences, SDP/RTP —
are refused with ``format_not_allowed`` before they open anything, so an uploaded playlist cannot
make the server read its own files. Streams (``--stream``: a URL or file the operator typed)
open with any format (``any_format=True``).

What opening may cost is bounded by the input's :class:`~qclip_engine.video.limits.Work`: an
MP4's declared samples are counted from its boxes before FFmpeg indexes them
(``video/iso_bmff.py``), the stream's declared frames and picture size are checked before any
frame is decoded, and FFmpeg's own ``max_pixels`` makes its decoders refuse larger pictures.
"""

from __future__ import annotations

import errno
import math
import os
import stat
import struct
from pathlib import Path

import av
import numpy as np

from ..defaults import PREPROCESSING, PREPROCESSINGS
from ..errors import (
    AudioOnlyError,
    DecodeFailedError,
    EmptyFileError,
    FormatNotAllowedError,
    NotAVideoError,
    PermissionDeniedError,
    TruncatedVideoError,
    UnsupportedCodecError,
    VideoNotFoundError,
)
from .iso_bmff import declared_video_samples, is_iso_bmff, iso_bmff_cut
from .limits import DecodeLimits, Work
from .resize import INTERPOLATION, resize_rgb

# What directory walks (qclip-score, the demo dataset) treat as video files; decoding itself
# never trusts an extension.
VIDEO_SUFFIXES = frozenset({
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".m2ts", ".mts", ".flv", ".wmv",
    ".3gp", ".ogv", ".mxf", ".y4m", ".gif", ".ivf", ".h264", ".264", ".hevc", ".h265", ".265",
})
# The demuxers a file may be read with (FFmpeg's names; "mov" covers mp4/m4a/3gp, "matroska" webm):
# each reads the one file it is given. Video containers and raw video streams, animated pictures,
# still pictures (a one-frame video, as before) and audio (so an audio file is audio_only, not
# refused). Left out on purpose: hls, dash, concat, image2 (patterns), sdp/rtp/rtsp, lavfi and
# devices, which open other files, sockets or devices; and the rarely met formats (no reason to
# widen what hostile files can reach).
SINGLE_FILE_FORMATS = (
    "mov", "matroska", "avi", "mpegts", "mpeg", "mpegvideo", "flv", "live_flv", "asf", "ogg", "nut", "mxf", "dv",
    "rm", "wtv", "nuv", "ivf", "obu", "av1", "h264", "hevc", "vvc", "evc", "m4v", "h261", "h263", "cavsvideo",
    "avs2", "avs3", "dirac", "vc1", "mjpeg", "yuv4mpegpipe",
    "gif", "apng", "webp_pipe", "png_pipe", "jpeg_pipe", "bmp_pipe",
    "mp3", "wav", "w64", "aiff", "flac", "aac", "ac3", "eac3", "dts", "caf", "amr", "wv",
)
# Containers whose open failing means "cut short" rather than "not a video": ISO BMFF
# (mp4/mov, whose sample index may sit at the end) and EBML (mkv/webm).
_EBML_MAGIC = b"\x1a\x45\xdf\xa3"
_AVFMT_NOTIMESTAMPS = 0x0080  # libavformat's AVFMT_NOTIMESTAMPS input-format flag


def decoder_max_pixels(limits: DecodeLimits) -> int | None:
    """FFmpeg's ``max_pixels`` for the decoders: twice the limit. Our check of the coded size is exact;
    this one is the backstop for a picture that grows mid-stream, and FFmpeg counts its padded
    buffer width (a picture exactly at the limit would be refused by the limit itself)."""
    return None if limits.max_pixels is None else 2 * limits.max_pixels


def open_options(limits: DecodeLimits, any_format: bool = False) -> dict[str, str]:
    """FFmpeg options of an open: the single-file formats (unless ``any_format``) and the decoders'
    ``max_pixels`` (PyAV hands the same options to the probe's decoders)."""
    options = {} if any_format else {"format_whitelist": ",".join(SINGLE_FILE_FORMATS)}
    if (backstop := decoder_max_pixels(limits)) is not None:
        options["max_pixels"] = str(backstop)
    return options


def check_opened(container: av.container.InputContainer, stream, work: Work) -> None:
    """The limits an open container must meet before anything is decoded: the frames it declares and
    its picture size (which takes the input's share of the decode budget); and the decoder's own
    ``max_pixels``, for a picture that grows mid-stream."""
    work.declared_frames(stream.frames or None)
    ctx = stream.codec_context
    work.picture(ctx.width, ctx.height)
    if (backstop := decoder_max_pixels(work.limits)) is not None:
        ctx.options = dict(ctx.options or {}) | {"max_pixels": str(backstop)}


def open_video(path: str | Path, *, work: Work | None = None, any_format: bool = False) -> av.container.InputContainer:
    """An open container with a decodable video stream, or the ``VideoError`` saying why not.

    ``work``: the input's limits and meter (``video/limits.py``; default limits when None);
    ``any_format``: admit every FFmpeg format, those that open other files too (streams only)."""
    p = Path(path)
    where = str(p)
    work = work if work is not None else Work(where=where)
    try:
        return _open_video(p, where, work, any_format)
    except PermissionError as exc:  # any read of an unreadable file: stat, FFmpeg's open, the header sniff
        if isinstance(exc, av.error.FFmpegError) and exc.errno not in (errno.EACCES, errno.EPERM):
            raise
        raise PermissionDeniedError(f"{p.name}: permission denied (this process may not read the file)",
                                    path=where) from exc


def _open_video(p: Path, where: str, work: Work, any_format: bool) -> av.container.InputContainer:
    try:
        st = os.stat(p)
    except PermissionError:
        raise
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the name
        raise VideoNotFoundError(f"{_unreachable(exc)}: {p}", path=where) from exc
    if not stat.S_ISREG(st.st_mode):
        raise NotAVideoError(f"not a regular file: {p}", path=where)
    if not os.access(p, os.R_OK):
        raise PermissionError(errno.EACCES, "Permission denied", where)
    if st.st_size == 0:
        raise EmptyFileError(f"empty file (0 bytes): {p}", path=where)
    work.declared_frames(declared_video_samples(p), "declares in its MP4 sample tables")  # before FFmpeg indexes them
    try:
        container = av.open(where, mode="r", metadata_errors="ignore", options=open_options(work.limits, any_format))
    except av.error.FFmpegError as exc:
        if isinstance(exc, PermissionError):
            raise
        if isinstance(exc, av.error.ArgumentError) and not any_format:  # EINVAL: the probed format is not admitted
            raise FormatNotAllowedError(
                f"{p.name}: FFmpeg reads it as a format that is not a single-file video container (a playlist, "
                "a manifest, a concat list or an image sequence opens other files); files are read only as: "
                f"{', '.join(SINGLE_FILE_FORMATS)}", path=where) from exc
        with p.open("rb") as f:
            head = f.read(256)
        if head.startswith(b"YUV4MPEG2 "):  # FFmpeg's refusal of a huge picture reads "Device or resource busy"
            raise DecodeFailedError(f"{p.name}: {_y4m_refusal(head, exc)}", path=where) from exc
        if is_iso_bmff(head) or head[:4] == _EBML_MAGIC:
            raise TruncatedVideoError(
                f"{p.name}: an MP4/MOV/MKV file FFmpeg cannot open ({exc.strerror or exc}); "
                "it is most likely cut short (its index is missing)",
                path=where,
            ) from exc
        raise NotAVideoError(f"{p.name}: not a video FFmpeg recognises ({exc.strerror or exc})", path=where) from exc
    stream = video_stream(container)
    if stream is None:
        kinds = sorted({"cover art" if s.type == "video" else s.type for s in container.streams})
        fmt = container.format.name
        container.close()
        if "audio" in kinds:
            raise AudioOnlyError(f"{p.name}: audio only, no video stream", path=where)
        if fmt.startswith("mov") and (cut := iso_bmff_cut(p)):
            # An MP4 cut inside its moov opens with no track, or the tracks before the cut: cut short.
            raise TruncatedVideoError(f"{p.name}: an MP4/MOV whose index is cut off ({cut}); its video track "
                                      "cannot be read", path=where)
        raise NotAVideoError(f"{p.name}: no video stream (streams: {kinds or 'none'})", path=where)
    if stream.codec_context is None:
        codec_id = getattr(stream, "codec_tag", "?")
        container.close()
        raise UnsupportedCodecError(f"{p.name}: no decoder for this video codec (tag {codec_id!r})", path=where)
    try:
        check_opened(container, stream, work)
    except BaseException:
        container.close()
        raise
    return container


def _unreachable(exc: Exception) -> str:
    """Why a path leads to no file, in words (the path is added by the caller)."""
    code = getattr(exc, "errno", None)
    if code == errno.ELOOP:
        return "a symlink loop (too many levels of symbolic links)"
    if code == errno.ENAMETOOLONG:
        return "the file name is too long for this system"
    if code == errno.ENOTDIR:
        return "no such file (a part of the path is not a directory)"
    if isinstance(exc, ValueError):
        return "no such file (the name contains a NUL byte)"
    return "no such file"


def _y4m_refusal(head: bytes, exc: av.error.FFmpegError) -> str:
    """Why FFmpeg refused a YUV4MPEG2 header, in words."""
    fields = head.split(b"\n", 1)[0].split()[1:]
    dims = {f[:1]: f[1:] for f in fields if f[:1] in (b"W", b"H")}
    try:
        w, h = int(dims[b"W"]), int(dims[b"H"])
    except (KeyError, ValueError):
        return f"a Y4M header without a usable picture size ({exc.strerror or exc})"
    if w <= 0 or h <= 0 or (w + 128) * (h + 128) >= (2**31 - 1) // 8:  # libavutil's av_image_check_size
        return f"the Y4M header declares a {w}×{h} picture, past what FFmpeg accepts"
    return f"a Y4M header FFmpeg refuses ({exc.strerror or exc})"


def video_stream(container: av.container.InputContainer):
    """The video stream ffmpeg would decode, or None: attached pictures (an audio file's cover
    art) are not video; of several, FFmpeg's best stream (the default one first), else the first."""
    candidates = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    try:
        best = container.streams.best("video")
    except (AttributeError, av.error.FFmpegError):
        best = None
    chosen = [s for s in candidates if best is not None and s.index == best.index]
    if chosen:
        return chosen[0]
    defaults = [s for s in candidates if s.disposition & av.stream.Disposition.default]
    return (defaults or candidates)[0]


def seekable(container: av.container.InputContainer) -> bool:
    """Whether timestamp seeks can work: raw elementary streams (.h264, .hevc: no timestamps)
    cannot, and ffmpeg reads them start to end (a failing seek is the other sign; see decode)."""
    return not container.format.flags & _AVFMT_NOTIMESTAMPS


class FrameReader:
    """Decoded frames of ``stream`` from the container's current position, as ffmpeg reads them.

    A packet that fails to decode is skipped (more than ``max_bad_packets`` in a row raise
    ``DecodeFailedError``); a demux error ends the frames and is kept in ``demux_error`` for
    the caller to judge (a file's scan flags truncation; a stream reports it). ``packets``
    counts the non-empty packets read, each also counted by ``work`` (its frame limit, its time
    and its cancellation: ``video/limits.py``). An iterator: a partly read reader resumes where it was.
    """

    def __init__(self, container, stream, *, max_bad_packets: int | None = None, where: str = "",
                 work: Work | None = None):
        self.packets = 0
        self.demux_error: av.error.FFmpegError | None = None
        self.work = work
        self._frames = self._read(container.demux(stream), max_bad_packets, where)

    def __iter__(self) -> FrameReader:
        return self

    def __next__(self) -> av.VideoFrame:
        return next(self._frames)

    def close(self) -> None:
        self._frames.close()

    def _read(self, packets, max_bad_packets, where):
        bad = 0
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.error.FFmpegError as exc:
                self.demux_error = exc
                return
            if packet.size:
                self.packets += 1
                if self.work is not None:
                    self.work.packet()
            try:
                decoded = packet.decode()
            except av.error.FFmpegError as exc:
                bad += 1
                if max_bad_packets is not None and bad > max_bad_packets:
                    name = Path(where).name if "://" not in where else where
                    raise DecodeFailedError(f"{name}: {bad} packets in a row failed to decode ({exc})",
                                            path=where or None) from exc
                continue
            bad = 0
            yield from decoded


def _rotation(angle: float | None) -> int:
    """FFmpeg's display-matrix angle (counter-clockwise, [-180, 180]) → 0/90/180/270."""
    if not angle or math.isnan(angle):
        return 0
    return int(round(angle / 90.0)) % 4 * 90


def _display_matrix(frame: av.VideoFrame) -> tuple[int, ...] | None:
    """The frame's 3×3 display matrix (9 int32: 16.16 fixed point, last column 2.30), if any."""
    try:
        side_data = list(frame.side_data)
    except (AttributeError, TypeError):
        return None
    for sd in side_data:
        if getattr(sd.type, "name", str(sd.type)).upper().endswith("DISPLAYMATRIX"):
            data = bytes(sd)
            if len(data) >= 36:
                return struct.unpack("=9i", data[:36])  # native byte order, as FFmpeg stores it
    return None


def display_orientation(frame: av.VideoFrame) -> tuple[int, bool]:
    """``(rotation, hflip)``: mirror the coded picture left-right if ``hflip``, then turn it
    ``rotation`` degrees counter-clockwise (0, 90, 180, 270) — the display matrix, as ffmpeg's
    autorotate applies it.

    A matrix with a negative determinant mirrors; ``frame.rotation`` alone reads a mirror as
    a 180° turn (upside down). Undoing the mirror (negating the matrix's first row) leaves a
    pure rotation, whose angle is computed as libavutil's ``av_display_rotation_get``.
    """
    m = _display_matrix(frame)
    if m is None:
        try:
            return _rotation(frame.rotation), False
        except (AttributeError, ValueError):
            return 0, False
    a, b, c, d = (v / 65536.0 for v in (m[0], m[1], m[3], m[4]))
    hflip = a * d - b * c < 0
    if hflip:
        a, b = -a, -b
    scale_x, scale_y = math.hypot(a, c), math.hypot(b, d)
    if scale_x == 0 or scale_y == 0:
        return 0, False
    return _rotation(-math.degrees(math.atan2(b / scale_y, a / scale_x))), hflip


def to_rgb(frame: av.VideoFrame, size: tuple[int, int] | None, rotation: int, hflip: bool = False,
           preprocessing: str = PREPROCESSING) -> np.ndarray:
    """One decoded frame → uint8 RGB ``[H, W, 3]`` upright at ``size`` (H, W): mirrored if ``hflip``,
    then turned ``rotation`` degrees (``display_orientation``'s pair, read once per video by the
    callers). The one place a decoded frame becomes a model-size frame; ``preprocessing``
    (``defaults.PREPROCESSINGS``) says how:

    * ``fast``: swscale converts and resizes in one step (bilinear), then the turn;
    * ``reference``: RGB at the coded size, turned upright, then PIL's bilinear resize
      (:func:`pil_resize`) — what the official Q-CLIP transform does to a decoded frame;
    * ``short_side_crop``: RGB at the coded size, turned upright, then :func:`short_side_crop`
      (the upright frame's geometry decides what is cropped, as in CLIPVQA's transform);
    * ``mmcv_short_side_crop``: the same, then :func:`mmcv_short_side_crop` (the released CLIPVQA
      evaluation transform's rounding and non-antialiased bilinear);
    * ``fragments``: RGB at the coded size, turned upright, then ``fragments.fragment_frame``:
      FAST-VQA's grid of 32 × 32 cells cut at native resolution (centred offsets, so every frame
      of a video has the same layout; a frame smaller than ``size`` upscaled first, as released);
    * ``fragments_and_crop``: the same native RGB, then :func:`fragments_and_crop`: the fragments
      and the ``mmcv_short_side_crop`` of one square half side by side (``size`` is (S, 2S)).
    """
    if preprocessing not in PREPROCESSINGS:
        raise ValueError(f"preprocessing must be one of {PREPROCESSINGS}, got {preprocessing!r}")
    if preprocessing != "fast":
        upright = to_rgb(frame, None, rotation, hflip)
        return upright if size is None else resize_rgb(upright, size, preprocessing)
    if size is None:
        rgb = frame.to_ndarray(format="rgb24", threads=1)
    else:
        h, w = size
        if rotation in (90, 270):  # resize in coded orientation, then turn
            h, w = w, h
        # One swscale thread: the decoder's frame threads already fill the cores.
        rgb = frame.to_ndarray(width=w, height=h, format="rgb24", interpolation=INTERPOLATION, threads=1)
    if hflip:
        rgb = rgb[:, ::-1]
    if rotation:
        rgb = np.rot90(rgb, k=rotation // 90)
    if hflip and not rotation:
        rgb = np.ascontiguousarray(rgb)
    return rgb
