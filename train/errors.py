"""Typed errors of training and the demo, and how their command lines report them.

Library functions raise these (with their stable ``code``) instead of exiting, so that
callers — tests, notebooks, the demo — can catch them; only the ``main()`` functions turn
a :class:`~qclip_engine.errors.QCLIPError` into a message on stderr and exit status 2.
"""

from __future__ import annotations

import sys

from qclip_engine.errors import QCLIPError

EXIT_ERROR = 2


class ConfigError(QCLIPError):
    """A training configuration or a ``key=value`` override that cannot be used."""

    code = "config_invalid"


class DatasetError(QCLIPError, ValueError):
    """Labels or videos that cannot be trained on: an unreadable label line, ``${DATA_ROOT}``
    unset, a split that cannot be made, no decodable video in a set. (A ``ValueError`` too, as
    these were before they had a code.)"""

    code = "dataset_invalid"


class CheckpointError(QCLIPError):
    """``--resume`` without a ``checkpoint.pt`` in the output directory, or one that does not
    fit the model."""

    code = "checkpoint_missing"


class DemoDataError(QCLIPError):
    """The demo dataset could not be built: some ffmpeg runs failed (each clip is named with
    the tail of its stderr)."""

    code = "demo_data_failed"


class DemoInputError(DemoDataError):
    """What the demo dataset is made from is missing or unusable: ffmpeg, the sample clips,
    the ``--sources`` directory or one of its videos, or too few sources to split."""

    code = "demo_inputs_unavailable"


class DemoStepError(QCLIPError):
    """A product step of the demo (``qclip-export``, ``qclip-score``) did not succeed."""

    code = "demo_step_failed"


def report(prog: str, exc: QCLIPError) -> int:
    """Print ``prog: message`` on stderr; the exit status of a CLI that met ``exc``."""
    print(f"{prog}: {exc.message}", file=sys.stderr)
    return EXIT_ERROR
