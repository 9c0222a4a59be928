"""Argument checks the CLIs share, made before any model loads, so that a bad argument is one line
and exit 2, never a traceback from deep inside a run (or after it).

The argparse ``type=`` functions check numbers at parse time. Floats must be finite: ``nan`` fails
every comparison and ``inf`` passes ``> 0``, and neither is a length, a rate or a limit anyone
means. :func:`cannot_create_in` tells whether an output can be created where it is to go.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

from .. import defaults
from ..video.limits import DecodeLimits


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}")
    return value


def finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = finite_float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be ≥ 0, got {text}")
    return value


def cannot_create_in(directory: Path) -> str | None:
    """Why no file can be created in ``directory``, or None. ``os.access`` answers yes to root
    everywhere; creating one is the test that holds for read-only mounts and /proc too (an unnamed
    file, Linux's O_TMPFILE, where the system has it)."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            return None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the name
        return f"nothing can be created in {directory}: {getattr(exc, 'strerror', None) or exc}"


def add_decode_limit_options(parser: argparse.ArgumentParser) -> None:
    """``--max-pixels``, ``--max-frames`` and ``--max-decode-s``, the decode limits of one input
    (``video/limits.py``), as ``qclip-score`` and ``qclip-serve`` both take them."""
    shown = "" if issubclass(parser.formatter_class, argparse.ArgumentDefaultsHelpFormatter) else " (default: %(default)s)"
    group = parser.add_argument_group("decode limits, per input (qclip_engine/video/limits.py)")
    group.add_argument("--max-pixels", type=positive_int, default=defaults.MAX_PICTURE_PIXELS, metavar="N",
                       help="refuse a picture of more than N pixels, coded width × height, before decoding it "
                            "(picture_too_large)" + shown)
    group.add_argument("--max-frames", type=positive_int, default=defaults.MAX_VIDEO_FRAMES, metavar="N",
                       help="refuse a video that declares or holds more than N frames (too_many_frames)" + shown)
    group.add_argument("--max-decode-s", type=non_negative_float, default=defaults.MAX_DECODE_S, metavar="S",
                       help="give up an input whose decode takes longer than S seconds (decode_timeout); 0: no "
                            "limit" + shown)


def decode_limits(args: argparse.Namespace) -> DecodeLimits:
    """The ``DecodeLimits`` of :func:`add_decode_limit_options`' arguments (``--max-decode-s 0``: none)."""
    return DecodeLimits(max_pixels=args.max_pixels, max_frames=args.max_frames, max_seconds=args.max_decode_s or None)
