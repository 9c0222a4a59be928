"""Typed errors carrying the stable codes of the error contract.

Every error a user can cause (a bad input, missing weights, a broken artifact) is a
``QCLIPError`` with a ``code`` that batch tools put in their error records, so that
pipelines can branch on the code rather than on message text.
"""

from __future__ import annotations


class QCLIPError(Exception):
    """Base class: ``code`` is a stable machine-readable string, ``message`` is for people."""

    code = "error"

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message

    def to_record(self) -> dict:
        return {"error": error_record(self)}


def error_record(exc: BaseException) -> dict[str, str]:
    """``{"code", "message"}`` for any failure: a ``QCLIPError`` keeps its code; anything else is
    ``internal_error`` (one input's failure, reported, never raised past the batch)."""
    if isinstance(exc, QCLIPError):
        return {"code": exc.code, "message": exc.message}
    return {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"}


class BackboneError(QCLIPError):
    """The backbone cannot be built as configured (unknown name, unsupported architecture)."""

    code = "backbone_unsupported"


class WeightsUnavailableError(QCLIPError):
    """Pretrained backbone weights could not be found or fetched."""

    code = "weights_unavailable"


class ArtifactError(QCLIPError):
    """An artifact directory is missing, incomplete or does not match its backbone."""

    code = "artifact_invalid"


class VideoError(QCLIPError):
    """A video that cannot be used as input; ``code`` says why."""

    code = "decode_failed"

    def __init__(self, message: str, *, path: str | None = None, code: str | None = None):
        super().__init__(message, code=code)
        self.path = path

    def to_record(self) -> dict:
        record = super().to_record()
        if self.path is not None:
            record["path"] = self.path
        return record


class VideoNotFoundError(VideoError):
    code = "not_found"


class EmptyFileError(VideoError):
    code = "empty_file"


class NotAVideoError(VideoError):
    """Not a media container FFmpeg recognises (wrong extension, text, random bytes)."""

    code = "not_a_video"


class AudioOnlyError(VideoError):
    code = "audio_only"


class UnsupportedCodecError(VideoError):
    """A video stream whose codec this FFmpeg build cannot decode."""

    code = "unsupported_codec"


class TruncatedVideoError(VideoError):
    """The file ends before the frames its container announces."""

    code = "truncated"


class DecodeFailedError(VideoError):
    """Corrupt data: the decoder failed or produced no frame."""

    code = "decode_failed"


class PermissionDeniedError(VideoError):
    """The file exists but this process may not read it."""

    code = "permission_denied"


class FormatNotAllowedError(VideoError):
    """A file FFmpeg identifies as a format that reads other files or resources (a playlist, a
    manifest, a concat list, an image sequence, ...) or as no single-file container."""

    code = "format_not_allowed"


class PictureTooLargeError(VideoError):
    """A picture of more pixels than the decode limit (``DecodeLimits.max_pixels``)."""

    code = "picture_too_large"


class TooManyFramesError(VideoError):
    """A video that declares or holds more frames than the decode limit (``DecodeLimits.max_frames``)."""

    code = "too_many_frames"


class DecodeTimeoutError(VideoError):
    """Decoding one input took longer than the decode limit (``DecodeLimits.max_seconds``)."""

    code = "decode_timeout"


class DecodeCancelledError(VideoError):
    """The decode was stopped because no one waits for it any more (a request that timed out or
    whose client went away); never a client's answer."""

    code = "cancelled"


class ConversionError(QCLIPError):
    """A checkpoint of another code base (``qclip-convert``) whose keys or shapes do not fit."""

    code = "checkpoint_invalid"


class ArtifactContentError(ArtifactError, ValueError):
    """What an artifact holds, or ``save_artifact`` would write, breaks the artifact's schema
    (``artifact_schema.py``): a ``config.json`` field out of type or bounds, a calibration that
    maps scores to no finite MOS, a tensor holding NaN or ±inf. A ``ValueError`` too, as
    ``save_artifact`` has always refused a bad calibration."""

    code = "artifact_invalid"


class NonFiniteOutputError(QCLIPError):
    """The model gave a NaN or infinite score, level similarity or MOS for an input (e.g. an FP16
    overflow): that input's error, never a number that no JSON reader accepts."""

    code = "non_finite_output"
