"""``qclip-score``: score videos (or a stream) and write one record per input.

    qclip-score INPUTS... [--artifact DIR] [--engine auto|torch|onnxruntime|tensorrt] [--batch N]
                [--format jsonl|csv] [--out FILE] [--stream SOURCE --timeline PNG]

INPUTS are files, directories (searched recursively for video files), globs (quoted,
``'clips/**/*.mp4'``) and ``@list.txt`` files (one input per line). Without
``--artifact`` the zero-shot model (README, "The model in Python") of the default backbone is used (its weights come
from the hub or its cache; offline, ``--weights FILE`` gives them).

Every input yields exactly one record — a score or an error with its code — and the
run goes on after a bad input. Exit status: 0 when every input was scored, 3 when some
failed, 2 when nothing could run (bad arguments, an unloadable artifact or model).
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import sys
from pathlib import Path
from typing import Iterable, Iterator, TextIO

from .. import defaults
from ..contract import QUALITY_LEVELS
from ..errors import QCLIPError, WeightsUnavailableError
from ..video.container import VIDEO_SUFFIXES

EXIT_OK, EXIT_USAGE, EXIT_SOME_FAILED = 0, 2, 3
GLOB_CHARS = set("*?[")


def expand_inputs(args: Iterable[str]) -> Iterator[str]:
    """Files, directories (recursive, video suffixes), globs and ``@list`` files → input strings.

    A glob that matches nothing and a list file that cannot be read are passed through
    as they are, so they come back as ``not_found`` records rather than vanishing.
    """
    for arg in args:
        if arg.startswith("@"):
            try:
                lines = Path(arg[1:]).read_text().splitlines()
            except OSError:
                yield arg[1:]
                continue
            yield from expand_inputs(line.strip() for line in lines if line.strip() and not line.startswith("#"))
        elif Path(arg).is_dir():
            yield from sorted(str(p) for p in Path(arg).rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
        elif GLOB_CHARS & set(arg) and not Path(arg).exists():
            matches = sorted(glob.glob(arg, recursive=True))
            yield from (matches or [arg])
        else:
            yield arg


CSV_COLUMNS = ["input", "score", "mos", *QUALITY_LEVELS, "frames", "error_code", "error_message"]
WINDOW_CSV_COLUMNS = ["index", "start_s", "end_s", "score", "mos", "alert", "partial", "error_code", "error_message"]


class RecordWriter:
    """JSON lines or CSV, flushed per record so a long run can be followed (and survives a kill)."""

    def __init__(self, stream: TextIO, fmt: str, columns: list[str]):
        self.stream, self.fmt, self.columns = stream, fmt, columns
        if fmt == "csv":
            self.csv = csv.DictWriter(stream, fieldnames=columns, extrasaction="ignore")
            self.csv.writeheader()

    def write(self, record: dict) -> None:
        if self.fmt == "jsonl":
            self.stream.write(json.dumps(record) + "\n")
        else:
            row = {k: record.get(k) for k in self.columns}
            row.update(record.get("levels") or {})
            if record.get("frames") is not None:
                row["frames"] = " ".join(map(str, record["frames"]))
            if record.get("error"):
                row["error_code"], row["error_message"] = record["error"]["code"], record["error"]["message"]
            self.csv.writerow(row)
        self.stream.flush()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qclip-score", description="Score video quality with Q-CLIP.")
    p.add_argument("inputs", nargs="*", help="files, directories, globs, @list.txt")
    p.add_argument("--artifact", type=Path, help="trained artifact directory (default: the zero-shot model)")
    p.add_argument("--engine", default="auto", choices=defaults.ENGINES)
    p.add_argument("--device", default=defaults.DEVICE, help="auto, cpu, cuda, cuda:N")
    p.add_argument("--batch", type=int, default=defaults.BATCH, help="videos per model call")
    p.add_argument("--workers", type=int, help="decode threads (default: min(4, cores))")
    p.add_argument("--sampler", help="frame sampler (default: the artifact's)")
    p.add_argument("--format", default="jsonl", choices=("jsonl", "csv"))
    p.add_argument("--out", type=Path, help="write records here instead of stdout")
    p.add_argument("--backbone", default=defaults.BACKBONE, help="zero-shot model backbone (no --artifact)")
    p.add_argument("--weights", help="local backbone weights file (offline use)")
    p.add_argument("--stream", metavar="SOURCE", help="score sliding windows of a file or URL (rtsp/http/hls)")
    p.add_argument("--window-s", type=float, default=defaults.WINDOW_S)
    p.add_argument("--hop-s", type=float, default=defaults.HOP_S)
    p.add_argument("--threshold", type=float, help="alert on windows scoring below this")
    p.add_argument("--timeline", type=Path, metavar="PNG", help="with --stream: plot the per-window scores")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _engine(args):
    from ..engine import QualityEngine

    kwargs = dict(engine=args.engine, device=args.device, batch=args.batch, sampler=args.sampler, workers=args.workers)
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

    try:
        engine = _engine(args)
    except (QCLIPError, ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"qclip-score: {exc}", file=sys.stderr)
        if isinstance(exc, WeightsUnavailableError):
            print("qclip-score: on the command line, give that file with --weights FILE", file=sys.stderr)
        return EXIT_USAGE

    out: TextIO = open(args.out, "w", newline="") if args.out else io.TextIOWrapper(sys.stdout.buffer, write_through=True)
    failed = total = 0
    try:
        if args.stream:
            failed, total = _score_stream(engine, args, out)
        else:
            from tqdm import tqdm

            inputs = list(expand_inputs(args.inputs))
            writer = RecordWriter(out, args.format, CSV_COLUMNS)
            bar = tqdm(total=len(inputs), unit="video", disable=args.quiet, file=sys.stderr)
            for result in engine.score(inputs):
                writer.write(result.to_record())
                total += 1
                failed += not result.ok
                bar.update()
                bar.set_postfix(failed=failed, refresh=False)
            bar.close()
    finally:
        if args.out:
            out.close()
        else:
            out.detach()
    if failed:
        print(f"qclip-score: {failed} of {total} input(s) failed (see their error records)", file=sys.stderr)
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
