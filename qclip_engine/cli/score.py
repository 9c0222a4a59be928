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

Besides the decode codes of ``qclip_engine.errors``, an input can fail before decoding with ``invalid_input`` (an empty or blank input) or
``no_videos`` (a directory with no file of a video suffix in it). Exit status: 0 when every
input was scored, 3 when some failed, 2 when nothing could run (bad arguments — ``--out``
and ``--weights`` are checked before any model loads — or an unloadable artifact or model).

Encoding: records are UTF-8 text, JSON lines and CSV alike. A file name that is not valid
UTF-8 reaches Python with its bad bytes as lone surrogates (``os.fsdecode``,
"surrogateescape"); every string of a record is written with each such byte as a
``\\xNN`` escape (byte 0xff → ``\\xff``), so the output always decodes as UTF-8 and
valid characters (``é``) stay as they are.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import glob
import io
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple, TextIO

from .. import defaults
from ..contract import QUALITY_LEVELS
from ..errors import QCLIPError, WeightsUnavailableError, error_record
from ..video.container import VIDEO_SUFFIXES

EXIT_OK, EXIT_USAGE, EXIT_SOME_FAILED = 0, 2, 3
GLOB_CHARS = set("*?[")
SUFFIXES_SEARCHED = " ".join(sorted(VIDEO_SUFFIXES))


class InputError(NamedTuple):
    """An input that fails before any decoding; ``expand_inputs`` yields it in that input's place."""

    input: str
    error: QCLIPError

    def to_record(self) -> dict:
        # The shape of an error result's record (qclip_engine/engine.py, VideoResult.to_record),
        # so readers of the output need not tell the two apart.
        return {"input": self.input, "error": error_record(self.error), "timing_ms": {}}


def expand_inputs(args: Iterable[str]) -> Iterator[str | InputError]:
    """Files, directories (recursive, video suffixes), globs and ``@list`` files → input strings.

    A glob that matches nothing and a list file that cannot be read are passed through
    as they are, so they come back as ``not_found`` records rather than vanishing. An empty
    or blank input and a directory without videos yield an ``InputError`` (``invalid_input``,
    ``no_videos``) where their paths would have been: one record per input, in order.
    """
    for arg in args:
        if not arg.strip():  # Path("") is "." — it would walk the working directory
            yield InputError(arg, QCLIPError(f"input {arg!r} is empty (or only whitespace)", code="invalid_input"))
        elif arg.startswith("@"):
            if not arg[1:].strip():
                yield InputError(arg, QCLIPError(f"input {arg!r}: the list file name is empty", code="invalid_input"))
                continue
            try:  # file names as the OS gives them: bytes that are not UTF-8 kept (os.fsdecode's way)
                lines = Path(arg[1:]).read_text(encoding="utf-8", errors="surrogateescape").splitlines()
            except (OSError, ValueError):
                yield arg[1:]
                continue
            yield from expand_inputs(line.strip() for line in lines if line.strip() and not line.startswith("#"))
        elif _is_dir(arg):
            found = sorted(str(p) for p in Path(arg).rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
            if found:
                yield from found
            else:
                message = f"directory {arg} holds no video file (searched recursively for {SUFFIXES_SEARCHED})"
                yield InputError(arg, QCLIPError(message, code="no_videos"))
        elif GLOB_CHARS & set(arg) and not _exists(arg):
            matches = sorted(glob.glob(arg, recursive=True))
            yield from (matches or [arg])
        else:
            yield arg


def _is_dir(arg: str) -> bool:
    try:
        return Path(arg).is_dir()
    except (OSError, ValueError):  # a name too long, a NUL byte: not a directory; the decoder says why
        return False


def _exists(arg: str) -> bool:
    try:
        return Path(arg).exists()
    except (OSError, ValueError):
        return False


def csv_columns(levels: tuple[str, ...] = QUALITY_LEVELS) -> list[str]:
    """The CSV header: one column per quality level of the model (Q-CLIP's five, CLIPVQA's six)."""
    return ["input", "score", "mos", *levels, "frames", "backend", "warnings", "error_code", "error_message"]


WINDOW_CSV_COLUMNS = ["index", "start_s", "end_s", "score", "mos", "alert", "partial", "backend", "error_code",
                      "error_message"]

_SURROGATE = re.compile("[\ud800-\udfff]")


def _escape_surrogate(match: re.Match) -> str:
    code = ord(match.group())
    # U+DC80..U+DCFF: a byte 0x80..0xff that was not UTF-8, held by os.fsdecode's surrogateescape.
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def printable(value: Any) -> Any:
    """``value`` with every string made encodable as UTF-8 (the encoding policy of the module docstring):
    each undecodable file-name byte becomes a ``\\xNN`` escape; dicts and lists are walked."""
    if isinstance(value, str):
        return _SURROGATE.sub(_escape_surrogate, value)
    if isinstance(value, dict):
        return {printable(k): printable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [printable(v) for v in value]
    return value


class RecordWriter:
    """JSON lines or CSV, flushed per record so a long run can be followed (and survives a kill)."""

    def __init__(self, stream: TextIO, fmt: str, columns: list[str]):
        self.stream, self.fmt, self.columns = stream, fmt, columns
        if fmt == "csv":
            self.csv = csv.DictWriter(stream, fieldnames=columns, extrasaction="ignore")
            self.csv.writeheader()

    def write(self, record: dict) -> None:
        record = printable(record)  # one policy for both formats (see the module docstring)
        if self.fmt == "jsonl":
            self.stream.write(json.dumps(record) + "\n")
        else:
            row = {k: record.get(k) for k in self.columns}
            row.update(record.get("levels") or {})
            if record.get("frames") is not None:
                row["frames"] = " ".join(map(str, record["frames"]))
            if record.get("warnings"):
                row["warnings"] = "; ".join(f"{w['code']}: {w['message']}" for w in record["warnings"])
            if record.get("error"):
                row["error_code"], row["error_message"] = record["error"]["code"], record["error"]["message"]
            self.csv.writerow(row)
        self.stream.flush()


EPILOG = f"""\
directories are searched recursively for files with these suffixes (any case):
  {SUFFIXES_SEARCHED}

every input gives one record, in input order: a score, or an error with its code
(not_found, empty_file, not_a_video, audio_only, unsupported_codec, truncated,
decode_failed, ...; invalid_input: an empty or blank input; no_videos: a
directory with no video file in it).

a file cut short (it ends before the frames or duration its container declares,
or inside a frame) is scored on what is there with a "warnings" entry of code
truncated; --strict makes it the truncated error.

records are UTF-8 text, JSON lines and CSV alike; a byte of a file name that is
not UTF-8 is written as a \\xNN escape (byte 0xff -> \\xff).

exit status:
  0 every input was scored
  3 some inputs failed (see their error records)
  2 nothing could run (bad arguments, --out not writable, --weights missing,
    an unloadable artifact or model)
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
    p.add_argument("--batch", type=int, default=defaults.BATCH, metavar="N",
                   help="videos per model call (default: %(default)s)")
    p.add_argument("--workers", type=int, metavar="N", help="decode threads (default: min(4, cores))")
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
    p.add_argument("--window-s", type=float, default=defaults.WINDOW_S, metavar="S",
                   help="with --stream: window length in seconds (default: %(default)s)")
    p.add_argument("--hop-s", type=float, default=defaults.HOP_S, metavar="S",
                   help="with --stream: seconds between window starts (default: %(default)s)")
    p.add_argument("--threshold", type=float, metavar="SCORE",
                   help="alert on windows scoring below this (default: no alerts)")
    p.add_argument("--timeline", type=Path, metavar="PNG",
                   help="with --stream: plot the per-window scores to PNG (default: no plot)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (default: a bar on stderr)")
    ray = p.add_argument_group("scale-out on Ray (the ray extra; qclip_engine/cluster/batch.py)")
    ray.add_argument("--ray", metavar="ADDRESS",
                     help="score on a Ray cluster: local (a Ray of this process), auto (the cluster `ray start` runs "
                          "here, or RAY_ADDRESS) or a cluster address; the same records, in input order "
                          "(default: no Ray, this process scores)")
    ray.add_argument("--ray-actors", type=int, default=1, metavar="N", help="scoring actors, each with its own model (default: 1)")
    ray.add_argument("--ray-gpus-per-actor", type=float, default=0.0, metavar="G",
                     help="GPUs each scoring actor takes (1 on GPU nodes: one actor per GPU; default: 0, CPU actors)")
    ray.add_argument("--ray-decode-cpus", type=float, default=1.0, metavar="C", help="CPUs each decode task takes (default: 1)")
    ray.add_argument("--ray-output", metavar="URI",
                     help="write the records where Ray writes (a directory, s3://…) as sharded files of "
                          "{id, input, record} instead of gathering them here (default: gathered, to --out or stdout)")
    ray.add_argument("--ray-output-format", default="jsonl", choices=("jsonl", "parquet"),
                     help="the files --ray-output writes (default: %(default)s)")
    return p


def _unwritable(path: Path) -> str | None:
    """Why ``path`` cannot be written as an output file, or None. Checked before a model loads,
    so a typo costs no model load and gives one line rather than a traceback."""
    if path.is_dir():
        return "is a directory"
    parent = path.parent
    if not parent.exists():
        return f"directory {parent} does not exist"
    if not parent.is_dir():
        return f"{parent} is not a directory"
    if not os.access(path if path.exists() else parent, os.W_OK):
        return "permission denied"
    return None


def _usage_problem(args) -> str | None:
    """The first argument that makes the run impossible (one line for stderr), or None."""
    for option, path in (("--out", args.out), ("--timeline", args.timeline)):
        if path is not None and (why := _unwritable(path)):
            return f"{option} {path}: {why}"
    if args.weights is not None:
        weights = Path(args.weights).expanduser()  # as qclip_engine/artifact.py reads it
        if not weights.is_file():
            return f"--weights {args.weights}: {'not a file' if weights.exists() else 'no such file'}"
    return None


def _engine(args):
    from ..engine import QualityEngine

    kwargs = dict(engine=args.engine, device=args.device, batch=args.batch, sampler=args.sampler, workers=args.workers,
                  strict=args.strict, precision=args.precision, decoder=args.decoder, torch_mode=args.torch_mode)
    if args.artifact is not None:
        if args.weights:
            from ..artifact import load_artifact

            return QualityEngine(args.artifact, model=load_artifact(args.artifact, pretrained=args.weights), **kwargs)
        return QualityEngine(args.artifact, **kwargs)
    return QualityEngine(None, backbone=args.backbone, pretrained=args.weights or "meta", **kwargs)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.inputs and not args.stream:
        _parser().error("give INPUTS or --stream SOURCE")
    if args.timeline and not args.stream:
        _parser().error("--timeline plots the windows of --stream")
    if args.batch < 1:
        _parser().error("--batch must be ≥ 1")
    if args.ray and (args.stream or args.artifact is None or args.weights):
        _parser().error("--ray scores files with an --artifact (its actors load it as it says; no --stream, no --weights)")
    if problem := _usage_problem(args):
        print(f"qclip-score: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if args.ray:
        return _score_on_ray(args)

    try:
        engine = _engine(args)
    except (QCLIPError, ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"qclip-score: {exc}", file=sys.stderr)
        if isinstance(exc, WeightsUnavailableError) and not args.weights:
            print("qclip-score: on the command line, give that file with --weights FILE", file=sys.stderr)
        return EXIT_USAGE

    out: TextIO = (open(args.out, "w", newline="", encoding="utf-8") if args.out
                   else io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", write_through=True))
    failed = total = warned = 0
    try:
        if args.stream:
            failed, total = _score_stream(engine, args, out)
        else:
            from tqdm import tqdm

            items = list(expand_inputs(args.inputs))
            writer = RecordWriter(out, args.format, csv_columns(engine.levels))
            bar = tqdm(total=len(items), unit="video", disable=args.quiet, file=sys.stderr)
            # Only real paths go to the engine, whose results come one each in input order
            # (qclip_engine/engine.py, QualityEngine.score); the InputErrors are written in between.
            paths = [item for item in items if not isinstance(item, InputError)]
            with contextlib.closing(engine.score(paths)) as results:
                failed, total, warned = _write_records(items, (r.to_record() for r in results), writer, bar)
            bar.close()
    finally:
        if args.out:
            out.close()
        else:
            out.detach()
    if warned:
        print(f"qclip-score: {warned} of {total} input(s) scored with warnings (see their records)", file=sys.stderr)
    if failed:
        print(f"qclip-score: {failed} of {total} input(s) failed (see their error records)", file=sys.stderr)
    return EXIT_SOME_FAILED if failed else EXIT_OK


def _write_records(items: list, records: Iterator[dict], writer: RecordWriter, bar) -> tuple[int, int, int]:
    """Each item's record in input order (the engine's for paths, in order; the InputErrors' own in
    between); (failed, total, warned)."""
    failed = total = warned = 0
    for item in items:
        record = item.to_record() if isinstance(item, InputError) else next(records)
        writer.write(record)
        total += 1
        failed += record.get("error") is not None
        warned += bool(record.get("warnings"))
        bar.update()
        bar.set_postfix(failed=failed, refresh=False)
    return failed, total, warned


def _score_on_ray(args) -> int:
    """``--ray``: the same records through the Ray Data pipeline (``cluster/batch.py``)."""
    try:
        from ..cluster.batch import RayOptions, add_records, connect, ordered_records, score_dataset
    except ImportError as exc:
        print(f"qclip-score: --ray needs the ray extra (pip install 'qclip-engine[ray]'): {exc}", file=sys.stderr)
        return EXIT_USAGE
    from tqdm import tqdm

    items = list(expand_inputs(args.inputs))
    options = RayOptions(engine=args.engine, device=args.device, precision=args.precision, batch=args.batch,
                         sampler=args.sampler, strict=args.strict, decoder="device" if args.decoder == "device" else "host",
                         actors=args.ray_actors, gpus_per_actor=args.ray_gpus_per_actor, decode_cpus=args.ray_decode_cpus)
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
        out: TextIO = (open(args.out, "w", newline="", encoding="utf-8") if args.out
                       else io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", write_through=True))
        try:
            writer = RecordWriter(out, args.format, csv_columns(levels))
            bar = tqdm(total=len(items), unit="video", disable=args.quiet, file=sys.stderr)
            failed, _, warned = _write_records(items, iter(ordered_records(done) if done is not None else []), writer, bar)
            bar.close()
        finally:
            out.close() if args.out else out.detach()
    if warned:
        print(f"qclip-score: {warned} of {len(items)} input(s) scored with warnings (see their records)", file=sys.stderr)
    if failed:
        print(f"qclip-score: {failed} of {len(items)} input(s) failed (see their error records)", file=sys.stderr)
    return EXIT_SOME_FAILED if failed else EXIT_OK


def _score_stream(engine, args, out: TextIO) -> tuple[int, int]:
    from ..stream import stream_windows
    from .timeline import plot_timeline

    writer = RecordWriter(out, args.format, WINDOW_CSV_COLUMNS)
    records, failed = [], 0
    windows = stream_windows(engine, args.stream, window_s=args.window_s, hop_s=args.hop_s, threshold=args.threshold)
    for window in windows:
        record = window.to_record()
        writer.write(record)
        records.append(record)
        failed += record.get("error") is not None
        if not args.quiet:
            state = "ERROR" if record.get("error") else ("ALERT" if record.get("alert") else "")
            print(f"window {record.get('index')}: {record.get('start_s', 0):.1f}–{record.get('end_s', 0):.1f} s "
                  f"score {record.get('score')} {state}", file=sys.stderr)
    if args.timeline:
        plot_timeline(records, args.timeline, threshold=args.threshold, title=str(args.stream))
        print(f"timeline: {args.timeline}", file=sys.stderr)
    return failed, max(len(records), 1)


if __name__ == "__main__":
    sys.exit(main())
