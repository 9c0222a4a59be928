"""Opening a video with PyAV and reading its frames as ffmpeg does: the pieces every reader shares.

Files (``video.decode``) and streams (``qclip_engine.stream``) both open through
:func:`open_video` (typed errors: ``not_found``, ``empty_file``, ``not_a_video``,
``audio_only``, ``unsupported_codec``, ``truncated``), read packets through
:class:`FrameReader` (a corrupt packet is skipped, as ffmpeg does) and convert frames with
:func:`to_rgb` (swscale, display rotation applied), so a stream window sees exactly the
pixels a file decode gives.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from ..errors import (
    AudioOnlyError,
    DecodeFailedError,
    EmptyFileError,
    NotAVideoError,
    TruncatedVideoError,
    UnsupportedCodecError,
    VideoNotFoundError,
)

INTERPOLATION = "BILINEAR"  # PE-Core's preprocessing: bilinear squash-resize
# What directory walks (qclip-score, the demo dataset) treat as video files; decoding itself
# never trusts an extension.
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".flv", ".wmv", ".y4m"})
# Containers whose open failing means "cut short" rather than "not a video": ISO BMFF
# (mp4/mov, whose sample index may sit at the end) and EBML (mkv/webm).
_ISO_BMFF_BOX = b"ftyp"
_EBML_MAGIC = b"\x1a\x45\xdf\xa3"


def open_video(path: str | Path) -> av.container.InputContainer:
    """An open container with a decodable video stream, or the ``VideoError`` saying why not."""
    p = Path(path)
    where = str(p)
    if not p.exists():
        raise VideoNotFoundError(f"no such file: {p}", path=where)
    if not p.is_file():
        raise NotAVideoError(f"not a regular file: {p}", path=where)
    if p.stat().st_size == 0:
        raise EmptyFileError(f"empty file (0 bytes): {p}", path=where)
    try:
        container = av.open(where, mode="r", metadata_errors="ignore")
    except av.error.FFmpegError as exc:
        head = p.open("rb").read(12)
        if head[4:8] == _ISO_BMFF_BOX or head[:4] == _EBML_MAGIC:
            raise TruncatedVideoError(
                f"{p.name}: an MP4/MOV/MKV file FFmpeg cannot open ({exc.strerror or exc}); "
                "it is most likely cut short (its index is missing)",
                path=where,
            ) from exc
        raise NotAVideoError(f"{p.name}: not a video FFmpeg recognises ({exc.strerror or exc})", path=where) from exc
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams})
        container.close()
        if "audio" in kinds:
            raise AudioOnlyError(f"{p.name}: audio only, no video stream", path=where)
        raise NotAVideoError(f"{p.name}: no video stream (streams: {kinds or 'none'})", path=where)
    stream = container.streams.video[0]
    if stream.codec_context is None:
        codec_id = getattr(stream, "codec_tag", "?")
        container.close()
        raise UnsupportedCodecError(f"{p.name}: no decoder for this video codec (tag {codec_id!r})", path=where)
    return container


class FrameReader:
    """Decoded frames of ``stream`` from the container's current position, as ffmpeg reads them.

    A packet that fails to decode is skipped (more than ``max_bad_packets`` in a row raise
    ``DecodeFailedError``); a demux error ends the frames and is kept in ``demux_error`` for
    the caller to judge (a file's scan flags truncation; a stream reports it). ``packets``
    counts the non-empty packets read. An iterator: a partly read reader resumes where it was.
    """

    def __init__(self, container, stream, *, max_bad_packets: int | None = None, where: str = ""):
        self.packets = 0
        self.demux_error: av.error.FFmpegError | None = None
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
    if not angle:
        return 0
    return int(round(angle / 90.0)) % 4 * 90


def display_rotation(frame: av.VideoFrame) -> int:
    """The frame's display rotation (counter-clockwise degrees: 0, 90, 180, 270)."""
    try:
        return _rotation(frame.rotation)
    except (AttributeError, ValueError):
        return 0


def to_rgb(frame: av.VideoFrame, size: tuple[int, int] | None, rotation: int) -> np.ndarray:
    """One decoded frame → uint8 RGB ``[H, W, 3]`` upright, swscale-resized to ``size`` (H, W)."""
    if size is None:
        rgb = frame.to_ndarray(format="rgb24", threads=1)
    else:
        h, w = size
        if rotation in (90, 270):  # resize in coded orientation, then turn
            h, w = w, h
        # One swscale thread: the decoder's frame threads already fill the cores.
        rgb = frame.to_ndarray(width=w, height=h, format="rgb24", interpolation=INTERPOLATION, threads=1)
    if rotation:
        rgb = np.rot90(rgb, k=rotation // 90)
    return rgb


def resize_rgb(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]`` → ``size`` (H, W) with swscale and the decoder's interpolation."""
    h, w = size
    av_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
    return av_frame.reformat(width=w, height=h, format="rgb24", interpolation=INTERPOLATION).to_ndarray()
