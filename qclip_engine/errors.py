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
        return {"error": {"code": self.code, "message": self.message}}


class BackboneError(QCLIPError):
    """The backbone cannot be built as configured (unknown name, unsupported architecture)."""

    code = "backbone_unsupported"


class WeightsUnavailableError(QCLIPError):
    """Pretrained backbone weights could not be found or fetched."""

    code = "weights_unavailable"


class ArtifactError(QCLIPError):
    """An artifact directory is missing, incomplete or does not match its backbone."""

    code = "artifact_invalid"
