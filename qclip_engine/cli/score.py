"""``qclip-score``: score videos (or a stream) and write one record per input.

    qclip-score INPUTS... [--artifact DIR] [--engine auto|torch|onnxruntime|tensorrt] [--batch N]
                [--format jsonl|csv] [--out FILE] [--stream SOURCE --timeline PNG]

INPUTS are files, directories (searched recursively for files with a video suffix,
``VIDEO_SUFFIXES``), globs (quoted, ``'clips/**/*.mp4'``) and ``@list.txt`` files (one input
per line). Without ``--artifact`` the zero-shot model (README, "The model in Python") of the
default backbone is used (its weights come from the hub or its cache; offline,
``--weights FILE`` gives them).

Every input yields exactly one record — a score or an error with its code — in input order,
and the run goes on after a bad input. A file that looks cut short (it ends before the frames
or duration its container declares, or inside a frame) is scored on what is there, with a
``warnings`` entry of code ``truncated`` saying what was decoded against what was declared;
``--strict`` makes it the ``truncated`` error instead.

Besides the decode codes of ``qclip_engine.errors``, an input can fail before decoding with
``invalid_input`` (an empty or blank input; an ``@list`` that is not a list within the bounds
below or that names itself), ``no_videos`` (a directory with no file of a video suffix in it) or
``permission_denied`` (a directory, or a directory under one, that cannot be read: one record
each, in path order among the directory's videos).

``@list`` files hold one input a line (blank lines and lines starting with ``#`` skipped) and may
name other lists. They are read a line at a time, never whole: a list of more than
``MAX_LIST_BYTES``, a line longer than ``MAX_LIST_LINE_BYTES`` or a NUL byte (no file name holds
one: a video or /dev/zero named as a list) is ``invalid_input``, and so is a list named again
inside its own expansion (directly or through other lists; one named twice side by side is
expanded twice). Pipes and devices are read the same way (``@<(find …)`` works; one that never
sends blocks, as ``cat`` would). A list that cannot be opened is passed on as an input, so its
record says why (``not_found``, ``permission_denied``).

Exit status: 0 when every input was scored, 3 when some failed, 2 when nothing could run (bad
arguments — numbers out of range, ``--out`` and ``--timeline`` not writable or naming one of the
inputs, ``--weights`` missing, all checked before any model loads — or an unloadable artifact or
model), 4 when the records or the ``--timeline`` plot could not be written (a full disk,
/dev/full; the run stops there, and the records already written stay), 141 (128 + SIGPIPE, as a
shell reports a tool a closed pipe stopped) when the reader of stdout went away
(``qclip-score … | head``): the run stops quietly, with no message.

Records never hold a non-finite number (JSON has none): a record that would is written as that
input's ``internal_error`` record instead (the engine reports non-finite model outputs itself,
as ``non_finite_output``, so one reaching the writer is a fault).

Decode limits (``--max-pixels``, ``--max-frames``, ``--max-decode-s``; ``video/limits.py``) bound
what one input may cost: past them its record is ``picture_too_large``, ``too_many_frames`` or
``decode_timeout``.

How inputs are expanded is ``cli/inputs.py``'s job, how records are written ``cli/records.py``'s.

Encoding: records are UTF-8 text, JSON lines and CSV alike. A file name that is not valid
UTF-8 reaches Python with its bad bytes as lone surrogates (``os.fsdecode``,
"surrogateescape"); every string of a record is written with each such byte as a
``\\xNN`` escape (byte 0xff → ``\\xff``), so the output always decodes as UTF-8 and
valid characters (``é``) stay as they are.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Iterator, TextIO

from .. import defaults
from ..errors import QCLIPError, WeightsUnavailableError
from .arguments import (add_decode_limit_options, cannot_create_in, decode_limits, finite_float, non_negative_float,
                        positive_float, positive_int)
from .inputs import MAX_LIST_BYTES, MAX_LIST_LINE_BYTES, SUFFIXES_SEARCHED, InputError, expand_inputs
from .records import WINDOW_CSV_COLUMNS, OutputError, RecordWriter, csv_columns, open_output

EXIT_OK, EXIT_USAGE, EXIT_SOME_FAILED, EXIT_OUTPUT_FAILED = 0, 2, 3, 4
EXIT_CLOSED_PIPE = 141  # 128 + SIGPIPE (13): the status a shell shows for a tool a closed pipe stopped




EPILOG = f"""\
directories are searched recursively for files with these suffixes (any case):
  {SUFFIXES_SEARCHED}

every input gives one record, in input order: a score, or an error with its code
(not_found, permission_denied, empty_file, not_a_video, audio_only,
unsupported_codec, truncated, decode_failed, picture_too_large, too_many_frames,
decode_timeout, ...; invalid_input: an empty or blank input, or an @list that is
no list or names itself; no_videos: a directory with no video file in it;
permission_denied also for each directory that cannot be read).

@list files: one input a line (blank lines and #-lines skipped); lists may name
lists. A list is refused (invalid_input) past {MAX_LIST_BYTES // 2**20} MiB, at a line longer than
{MAX_LIST_LINE_BYTES} bytes, at a NUL byte (a binary file) or when it is named again inside its
own expansion. Pipes work: @<(find clips -name '*.mp4').

a file cut short (it ends before the frames or duration its container declares,
or inside a frame) is scored on what is there with a "warnings" entry of code
truncated; --strict makes it the truncated error.

records are UTF-8 text, JSON lines and CSV alike; a byte of a file name that is
not UTF-8 is written as a \\xNN escape (byte 0xff -> \\xff). A record never holds
NaN or Infinity: one that would is that input's internal_error record.

exit status:
  0 every input was scored
  3 some inputs failed (see their error records)
  2 nothing could run (bad arguments, --out or --timeline not writable or
    naming an input, --weights missing, an unloadable artifact or model)
  4 the records or the --timeline plot could not be written (the records
    written until then stay)
  141 stdout was closed by its reader (qclip-score ... | head): stopped quietly
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qclip-score", description="Score video quality with Q-CLIP.", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="*", help="files, directories (searched recursively), globs, @list.txt")
    p.add_argument("--artifact", type=Path, metavar="DIR",
                   help="trained artifact directory (default: none, the zero-shot model of --backbone)")
    p.add_argument("--engine", default="auto", choices=defaults.ENGINES,
                   help="inference backend; auto: on a GPU TensorRT (with a plan) or torch, on the CPU the one "
                        "--precision auto measures fastest (default: %(default)s)")
    p.add_argument("--device", default=defaults.DEVICE, help="auto, cpu, cuda, cuda:N (default: %(default)s)")
    p.add_argument("--decoder", default=defaults.DECODER, choices=defaults.DECODERS,
                   help="host: PyAV on the CPU, frames copied to the backend; device: frames stay on the backend's "
                        "device (NVDEC through DALI on a GPU); auto: device for a CUDA backend when DALI and "
                        "cuda-python import (default: %(default)s)")
    p.add_argument("--torch-mode", default=defaults.TORCH_MODE, choices=defaults.TORCH_MODES,
                   help="how the torch backend runs on a GPU: CUDA graphs per batch size or torch.compile "
                        "(max-autotune), prepared at start-up (default: %(default)s)")
    p.add_argument("--precision", default=defaults.PRECISION, choices=defaults.PRECISIONS,
                   help="auto: FP16 on a GPU; on the CPU the fastest backend and precision measured here among "
                        "those the CPU has and whose score drift the artifact records within limits "
                        "(default: %(default)s)")
    p.add_argument("--batch", type=positive_int, default=defaults.BATCH, metavar="N",
                   help="videos per model call (default: %(default)s)")
    p.add_argument("--workers", type=positive_int, metavar="N", help="decode threads (default: min(4, cores))")
    p.add_argument("--sampler", help="frame sampler (default: the artifact's)")
    p.add_argument("--format", default="jsonl", choices=("jsonl", "csv"), help="record format (default: %(default)s)")
    p.add_argument("--strict", action="store_true",
                   help="a file cut short is the truncated error, not a score with a warning (default: off)")
    p.add_argument("--out", type=Path, metavar="FILE", help="write records to FILE (default: stdout)")
    p.add_argument("--backbone", default=defaults.BACKBONE,
                   help="zero-shot model backbone, without --artifact (default: %(default)s)")
    p.add_argument("--weights", metavar="FILE",
                   help="local backbone weights file, for offline use (default: the hub or its cache)")
    p.add_argument("--stream", metavar="SOURCE",
                   help="score sliding windows of a file or URL (rtsp/http/hls) instead of INPUTS (default: off)")
    p.add_argument("--window-s", type=positive_float, default=defaults.WINDOW_S, metavar="S",
                   help="with --stream: window length in seconds (default: %(default)s)")
    p.add_argument("--hop-s", type=positive_float, default=defaults.HOP_S, metavar="S",
                   help="with --stream: seconds between window starts (default: %(default)s)")
    p.add_argument("--threshold", type=finite_float, metavar="SCORE",
                   help="alert on windows scoring below this (default: no alerts)")
    p.add_argument("--timeline", type=Path, metavar="PNG",
                   help="with --stream: plot the per-window scores to PNG (default: no plot)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (default: a bar on stderr)")
    add_decode_limit_options(p)
    ray = p.add_argument_group("scale-out on Ray (the ray extra; qclip_engine/cluster/batch.py)")
    ray.add_argument("--ray", metavar="ADDRESS",
                     help="score on a Ray cluster: local (a Ray of this process), auto (the cluster `ray start` runs "
                          "here, or RAY_ADDRESS) or a cluster address; the same records, in input order "
                          "(default: no Ray, this process scores)")
    ray.add_argument("--ray-actors", type=positive_int, default=1, metavar="N",
                     help="scoring actors, each with its own model (default: 1)")
    ray.add_argument("--ray-gpus-per-actor", type=non_negative_float, default=0.0, metavar="G",
                     help="GPUs each scoring actor takes (1 on GPU nodes: one actor per GPU; default: 0, CPU actors)")
    ray.add_argument("--ray-decode-cpus", type=positive_float, default=1.0, metavar="C",
                     help="CPUs each decode task takes (default: 1)")
    ray.add_argument("--ray-output", metavar="URI",
                     help="write the records where Ray writes (a directory, s3://…) as sharded files of "
                          "{id, input, record} instead of gathering them here (default: gathered, to --out or stdout)")
    ray.add_argument("--ray-output-format", default="jsonl", choices=("jsonl", "parquet"),
                     help="the files --ray-output writes (default: %(default)s)")
    return p


def _unwritable(path: Path) -> str | None:
    """Why ``path`` cannot be written as an output file, or None. Checked before a model loads,
    so a typo costs no model load and gives one line rather than a traceback."""
    try:
        return _why_unwritable(path)
    except (OSError, ValueError) as exc:  # a directory on the way that cannot be searched, a NUL byte
        return str(getattr(exc, "strerror", None) or exc)


def _why_unwritable(path: Path) -> str | None:
    if path.is_dir():
        return "is a directory"
    parent = path.parent
    if not parent.exists():
        return f"directory {parent} does not exist"
    if not parent.is_dir():
        return f"{parent} is not a directory"
    if not os.access(path if path.exists() else parent, os.W_OK):
        return "permission denied"
    return None if path.exists() else cannot_create_in(parent)


def _same_file(a: str | Path, b: str | Path) -> bool:
    """Whether ``a`` and ``b`` name one file: by device and inode when both exist (hard and symbolic
    links, other spellings), else by their resolved paths (one to be created)."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        try:
            return os.path.realpath(a) == os.path.realpath(b)
        except (OSError, ValueError):
            return False


def _usage_problem(args, items: list[str | InputError]) -> str | None:
    """The first argument that makes the run impossible (one line for stderr), or None."""
    for option, path in (("--out", args.out), ("--timeline", args.timeline)):
        if path is not None and (why := _unwritable(path)):
            return f"{option} {path}: {why}"
    # Writing opens (and truncates) the output before any input is read: an output that is an
    # input, or a list naming them, would be destroyed unscored.
    inputs = [item for item in items if not isinstance(item, InputError)]
    inputs += [arg[1:] for arg in args.inputs if arg.startswith("@")] + ([args.stream] if args.stream else [])
    for option, path in (("--out", args.out), ("--timeline", args.timeline)):
        if path is not None and (named := next((i for i in inputs if _same_file(i, path)), None)) is not None:
            return f"{option} {path}: is the input {named}, which writing would destroy before it is read"
    if args.weights is not None:
        weights = Path(args.weights).expanduser()  # as qclip_engine/artifact.py reads it
        if not weights.is_file():
            return f"--weights {args.weights}: {'not a file' if weights.exists() else 'no such file'}"
    return None


def build_engine(args):
    """The engine the parsed arguments describe (qclip-score's and qclip-monitor's engine options)."""
    from ..engine import QualityEngine

    limits = decode_limits(args)
    kwargs = dict(engine=args.engine, device=args.device, batch=args.batch, sampler=args.sampler, workers=args.workers,
                  strict=args.strict, precision=args.precision, decoder=args.decoder, torch_mode=args.torch_mode,
                  limits=limits)
    if args.artifact is not None:
        if args.weights:
            from ..artifact import load_artifact

            return QualityEngine(args.artifact, model=load_artifact(args.artifact, pretrained=args.weights), **kwargs)
        return QualityEngine(args.artifact, **kwargs)
    return QualityEngine(None, backbone=args.backbone, pretrained=args.weights or "meta", **kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.inputs and not args.stream:
        parser.error("give INPUTS or --stream SOURCE")
    if args.timeline and not args.stream:
        parser.error("--timeline plots the windows of --stream")
    if args.ray and (args.stream or args.artifact is None or args.weights):
        parser.error("--ray scores files with an --artifact (its actors load it as it says; no --stream, no --weights)")
    items = [] if args.stream else list(expand_inputs(args.inputs))
    if problem := _usage_problem(args, items):
        print(f"qclip-score: {problem}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return _score_on_ray(args, items) if args.ray else _score_here(args, items)
    except OutputError as exc:
        if exc.closed_pipe:  # no message: the reader that went away wanted no more
            return EXIT_CLOSED_PIPE
        print(f"qclip-score: {exc}", file=sys.stderr)
        return EXIT_OUTPUT_FAILED


def _score_here(args, items: list[str | InputError]) -> int:
    """Score in this process: the stream's windows, or every input's record."""
    try:
        engine = build_engine(args)
    except (QCLIPError, ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"qclip-score: {exc}", file=sys.stderr)
        if isinstance(exc, WeightsUnavailableError) and not args.weights:
            print("qclip-score: on the command line, give that file with --weights FILE", file=sys.stderr)
        return EXIT_USAGE

    warned = 0
    with open_output(args.out) as (out, where):
        if args.stream:
            failed, total = _score_stream(engine, args, out, where)
        else:
            from tqdm import tqdm

            writer = RecordWriter(out, args.format, csv_columns(engine.levels), where)
            # Only real paths go to the engine, whose results come one each in input order
            # (qclip_engine/engine.py, QualityEngine.score); the InputErrors are written in between.
            paths = [item for item in items if not isinstance(item, InputError)]
            with (tqdm(total=len(items), unit="video", disable=args.quiet, file=sys.stderr) as bar,
                  contextlib.closing(engine.score(paths)) as results):
                failed, total, warned = _write_records(items, (r.to_record() for r in results), writer, bar)
    _report(failed, warned, total)
    return EXIT_SOME_FAILED if failed else EXIT_OK


def _report(failed: int, warned: int, total: int) -> None:
    if warned:
        print(f"qclip-score: {warned} of {total} input(s) scored with warnings (see their records)", file=sys.stderr)
    if failed:
        print(f"qclip-score: {failed} of {total} input(s) failed (see their error records)", file=sys.stderr)


def _write_records(items: list, records: Iterator[dict], writer: RecordWriter, bar) -> tuple[int, int, int]:
    """Each item's record in input order (the engine's for paths, in order; the InputErrors' own in
    between); (failed, total, warned) of the records written."""
    failed = total = warned = 0
    for item in items:
        record = writer.write(item.to_record() if isinstance(item, InputError) else next(records))
        total += 1
        failed += record.get("error") is not None
        warned += bool(record.get("warnings"))
        bar.update()
        bar.set_postfix(failed=failed, refresh=False)
    return failed, total, warned


def _score_on_ray(args, items: list[str | InputError]) -> int:
    """``--ray``: the same records through the Ray Data pipeline (``cluster/batch.py``)."""
    try:
        from ..cluster.batch import RayOptions, add_records, connect, ordered_records, score_dataset
    except ImportError as exc:
        print(f"qclip-score: --ray needs the ray extra (pip install 'qclip-engine[ray]'): {exc}", file=sys.stderr)
        return EXIT_USAGE
    from tqdm import tqdm

    options = RayOptions(engine=args.engine, device=args.device, precision=args.precision, batch=args.batch,
                         sampler=args.sampler, strict=args.strict, decoder="device" if args.decoder == "device" else "host",
                         actors=args.ray_actors, gpus_per_actor=args.ray_gpus_per_actor, decode_cpus=args.ray_decode_cpus,
                         max_pixels=args.max_pixels, max_frames=args.max_frames, max_decode_s=args.max_decode_s or None)
    try:
        from ..artifact import artifact_spec

        levels = artifact_spec(args.artifact).levels  # the CSV's level columns
        connect(args.ray)
        # ids are positions among all the inputs, so the InputErrors' records take their own places
        rows = [{"id": i, "path": item} for i, item in enumerate(items) if not isinstance(item, InputError)]
        done = score_dataset(rows, args.artifact, options) if rows else None
    except (QCLIPError, ValueError, FileNotFoundError, ConnectionError) as exc:
        print(f"qclip-score: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.ray_output:
        errors = [{"id": i, "input": item.input, "record": json.dumps(item.to_record())}
                  for i, item in enumerate(items) if isinstance(item, InputError)]
        if errors:
            done = add_records(done, errors)
        (done.write_parquet if args.ray_output_format == "parquet" else done.write_json)(args.ray_output)
        records = [json.loads(row["record"]) for row in done.iter_rows()]
        failed, warned = sum("error" in r for r in records), sum(bool(r.get("warnings")) for r in records)
        print(f"qclip-score: {len(records)} records written to {args.ray_output} ({args.ray_output_format}, "
              "one per input, by id)", file=sys.stderr)
    else:
        with open_output(args.out) as (out, where):
            writer = RecordWriter(out, args.format, csv_columns(levels), where)
            with tqdm(total=len(items), unit="video", disable=args.quiet, file=sys.stderr) as bar:
                records = iter(ordered_records(done) if done is not None else [])
                failed, _, warned = _write_records(items, records, writer, bar)
    _report(failed, warned, len(items))
    return EXIT_SOME_FAILED if failed else EXIT_OK


def _score_stream(engine, args, out: TextIO, where: str) -> tuple[int, int]:
    from ..stream import stream_windows
    from .timeline import plot_timeline

    writer = RecordWriter(out, args.format, WINDOW_CSV_COLUMNS, where)
    records, failed = [], 0
    windows = stream_windows(engine, args.stream, window_s=args.window_s, hop_s=args.hop_s, threshold=args.threshold)
    for window in windows:
        record = writer.write(window.to_record())
        records.append(record)
        failed += record.get("error") is not None
        if not args.quiet:
            state = "ERROR" if record.get("error") else ("ALERT" if record.get("alert") else "")
            print(f"window {record.get('index')}: {record.get('start_s', 0):.1f}–{record.get('end_s', 0):.1f} s "
                  f"score {record.get('score')} {state}", file=sys.stderr)
    if args.timeline:
        try:
            plot_timeline(records, args.timeline, threshold=args.threshold, title=str(args.stream))
        except OSError as exc:
            raise OutputError(f"--timeline {args.timeline}", exc) from exc
        print(f"timeline: {args.timeline}", file=sys.stderr)
    return failed, max(len(records), 1)


if __name__ == "__main__":
    sys.exit(main())
