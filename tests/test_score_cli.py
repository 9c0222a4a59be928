"""qclip-score: one record per input whatever the input, inputs expanded as users write them, exit codes."""

import csv
import errno
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from media import encode, hostile_corpus, moving_frames, odd_but_valid
from conftest import tiny_model

from qclip_engine import save_artifact
from qclip_engine import defaults
from qclip_engine.cli import score as score_cli
from qclip_engine.cli import inputs as inputs_cli
from qclip_engine.cli.inputs import InputError, expand_inputs
from qclip_engine.cli.records import printable
from qclip_engine.cli.score import _parser, main
from qclip_engine.errors import QCLIPError

@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return save_artifact(tiny_model(), tmp_path_factory.mktemp("score_artifact") / "art")


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    root = tmp_path_factory.mktemp("good")
    return [
        encode(root / "a.mp4", moving_frames(24, seed=1)),
        encode(root / "b.webm", moving_frames(18, seed=2), codec="libvpx-vp9"),
        encode(root / "c.mkv", moving_frames(30, seed=3), codec="libx265", options={"x265-params": "log-level=error"}),
        encode(root / "d.avi", moving_frames(40, seed=4), codec="mpeg4"),
    ]


def test_a_hostile_corpus_gives_one_record_each_in_order_and_exit_3(artifact, good, tmp_path):
    valid = odd_but_valid(tmp_path)  # one frame, grayscale, 17×9, rotated, VFR: all scored
    corpus = hostile_corpus(tmp_path / "corpus", good) + [(str(p), {"score"}) for p in valid]
    assert len(corpus) >= 200
    out = tmp_path / "scores.jsonl"
    # A separate process: a crash inside FFmpeg would kill it rather than pass unnoticed. The
    # inputs go on the command line as a user types them ("" and non-UTF-8 names included).
    done = subprocess.run(
        [sys.executable, "-m", "qclip_engine.cli.score", *(name for name, _ in corpus), "--artifact", str(artifact),
         "--engine", "torch", "--batch", "8", "--out", str(out), "--quiet"],
        capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 3, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["input"] for r in records] == [printable(name) for name, _ in corpus]  # one each, in order
    outcomes = Counter()
    for (name, allowed), r in zip(corpus, records):
        assert ("score" in r) != ("error" in r), r
        outcome = r["error"]["code"] if "error" in r else "score"
        assert outcome in allowed, (name, r)
        assert outcome != "internal_error"
        if "error" in r:
            assert r["error"]["message"], r
        for warning in r.get("warnings", []):
            assert warning["code"] == "truncated" and warning["message"], r
        outcomes[outcome, bool(r.get("warnings"))] += 1
    one_frame = records[[name for name, _ in corpus].index(str(valid[0]))]
    assert one_frame["frames"] == [0, 0, 0, 0]  # repeated when fewer frames than K
    # Cut files are scored on what is there and say so, or are the truncated error.
    assert outcomes["score", True] >= 40 and outcomes["truncated", False] >= 10, outcomes
    assert "failed" in done.stderr and "with warnings" in done.stderr


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_cut_file_is_scored_with_a_warning_or_with_strict_is_the_truncated_error(artifact, tmp_path, fmt):
    whole = encode(tmp_path / "whole.mkv", moving_frames(50))
    data = whole.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    out = tmp_path / f"scores.{fmt}"
    common = ["--artifact", str(artifact), "--engine", "torch", "--format", fmt, "--out", str(out), "--quiet"]

    def rows():
        lines = out.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines] if fmt == "jsonl" else list(csv.DictReader(lines))

    assert main([str(whole), str(cut), *common]) == 0  # scored: a warning is not a failure
    full, partial = rows()
    assert not full.get("warnings") and not full.get("error_code")
    assert full["backend"] == partial["backend"] == "torch-fp32"  # what scored it, in both formats
    warnings = partial["warnings"]
    text = warnings if fmt == "csv" else "; ".join(f"{w['code']}: {w['message']}" for w in warnings)
    assert text.startswith("truncated: ") and "of a declared 2.000 s" in text, text
    if fmt == "jsonl":
        assert partial["score"] is not None and partial["video"]["declared_duration"] == pytest.approx(2.0)
        assert partial["video"]["frame_count"] < 50
    assert main([str(whole), str(cut), "--strict", *common]) == 3
    full, partial = rows()
    code = partial["error"]["code"] if fmt == "jsonl" else partial["error_code"]
    assert code == "truncated" and not (full.get("error") or full.get("error_code"))


def test_inputs_expand_from_directories_globs_and_lists(good, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# a comment\n{good[0]}\n\n{tmp_path / 'nope.mp4'}\n")
    root = good[0].parent
    assert list(expand_inputs([str(root)])) == sorted(map(str, good))
    assert list(expand_inputs([str(root / "*.mp4")])) == [str(good[0])]
    assert list(expand_inputs([f"@{listing}"])) == [str(good[0]), str(tmp_path / "nope.mp4")]
    assert list(expand_inputs([str(tmp_path / "*.nothing")])) == [str(tmp_path / "*.nothing")]  # reported, not dropped


def test_all_good_exits_0_and_csv_has_a_row_each(artifact, good, tmp_path):
    out = tmp_path / "scores.csv"
    code = main([str(good[0].parent), "--artifact", str(artifact), "--engine", "torch", "--format", "csv",
                 "--out", str(out), "--quiet"])
    assert code == 0
    rows = list(csv.DictReader(out.open()))
    assert [row["input"] for row in rows] == sorted(map(str, good))
    assert all(float(row["score"]) == float(row["score"]) and row["excellent"] for row in rows)
    assert not any(row["error_code"] for row in rows)


def test_unloadable_artifact_exits_2(tmp_path, capsys):
    assert main([str(tmp_path / "x.mp4"), "--artifact", str(tmp_path / "no_artifact")]) == 2
    assert "qclip-score:" in capsys.readouterr().err


def test_zero_shot_without_weights_offline_exits_2_saying_how_to_pass_them(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main([str(tmp_path / "x.mp4"), "--backbone", "PE-Core-T-16-384"]) == 2
    assert "--weights FILE" in capsys.readouterr().err


def _records(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _no_model(monkeypatch):
    """Fail the test if ``qclip-score`` gets as far as building an engine (loading a model)."""
    monkeypatch.setattr(score_cli, "build_engine", lambda args: pytest.fail("a model was loaded despite a bad argument"))


def test_empty_or_blank_input_is_one_invalid_input_record_never_a_walk(artifact, good, tmp_path, monkeypatch):
    monkeypatch.chdir(good[0].parent)  # a walk of "." (Path("")) would find and score good's videos here
    [marker] = expand_inputs([""])  # an error marker, not a path
    assert marker.input == "" and marker.error.code == "invalid_input"
    assert [m.error.code for m in expand_inputs(["@", "@ ", "\n"])] == ["invalid_input"] * 3
    out = tmp_path / "scores.jsonl"
    code = main(["", " \t", str(good[0]), "--artifact", str(artifact), "--engine", "torch", "--out", str(out),
                 "--quiet"])
    assert code == 3
    records = _records(out)
    assert [r["input"] for r in records] == ["", " \t", str(good[0])]
    assert [r.get("error", {}).get("code") for r in records] == ["invalid_input", "invalid_input", None]
    assert "empty" in records[0]["error"]["message"] and "score" in records[2]


def test_directory_without_videos_is_one_no_videos_record_in_input_order(artifact, good, tmp_path):
    empty = tmp_path / "no_videos"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a video")
    named_like_a_video = tmp_path / "x.mp4"
    named_like_a_video.mkdir()
    missing = tmp_path / "missing.mp4"
    inputs = [str(good[0]), str(empty), str(missing), str(named_like_a_video), str(good[1])]
    out = tmp_path / "scores.jsonl"
    # --batch 8: good[0] and good[1] share one backend call, the error records sit between them.
    code = main([*inputs, "--artifact", str(artifact), "--engine", "torch", "--batch", "8", "--out", str(out),
                 "--quiet"])
    assert code == 3
    records = _records(out)
    assert [r["input"] for r in records] == inputs
    assert [r.get("error", {}).get("code") for r in records] == [None, "no_videos", "not_found", "no_videos", None]
    message = records[1]["error"]["message"]
    assert str(empty) in message and ".mp4" in message and ".webm" in message


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_non_utf8_file_names_are_written_as_utf8_with_backslash_escapes(artifact, good, tmp_path, fmt):
    root = tmp_path / "odd_names"
    root.mkdir()
    name = os.path.join(os.fsencode(root), b"caf\xc3\xa9-\xff.mp4")  # valid UTF-8 "é", then a lone \xff byte
    with open(name, "wb") as f:
        f.write(good[0].read_bytes())
    out = tmp_path / f"scores.{fmt}"
    code = main([str(root), "--artifact", str(artifact), "--engine", "torch", "--format", fmt, "--out", str(out),
                 "--quiet"])
    assert code in (0, 3)
    text = out.read_bytes().decode("utf-8")  # strict: the output is valid UTF-8
    lines = text.splitlines()
    rows = [json.loads(line) for line in lines] if fmt == "jsonl" else list(csv.DictReader(lines))
    assert [row["input"] for row in rows] == [str(root / "café-\\xff.mp4")]
    assert not any(0xD800 <= ord(c) <= 0xDFFF for c in text)


@pytest.mark.parametrize("where", ["missing_parent", "directory"])
def test_bad_out_exits_2_in_one_line_before_loading_a_model(tmp_path, capsys, monkeypatch, where):
    _no_model(monkeypatch)
    out = tmp_path / "no_such_dir" / "scores.jsonl" if where == "missing_parent" else tmp_path
    code = main([str(tmp_path / "x.mp4"), "--artifact", str(tmp_path / "no_artifact"), "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"qclip-score: --out {out}: "), err


def test_bad_timeline_exits_2_before_loading_a_model(tmp_path, capsys, monkeypatch):
    _no_model(monkeypatch)
    png = tmp_path / "no_such_dir" / "timeline.png"
    assert main(["--stream", str(tmp_path / "x.mp4"), "--timeline", str(png)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"qclip-score: --timeline {png}: directory {png.parent} does not exist"]


def test_missing_weights_file_is_named_before_loading_a_model(tmp_path, capsys, monkeypatch):
    _no_model(monkeypatch)
    missing = tmp_path / "nope.safetensors"
    assert main([str(tmp_path / "x.mp4"), "--weights", str(missing)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"qclip-score: --weights {missing}: no such file"]


def test_help_states_every_default_the_exit_codes_the_suffixes_and_the_encoding(capsys):
    for action in _parser()._actions:
        if action.option_strings and action.dest != "help":
            assert action.help and "default" in action.help, action.option_strings
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"(default: {defaults.BATCH})" in text and f"(default: {defaults.BACKBONE})" in text
    for needle in ("0 every input was scored", "3 some inputs failed", "2 nothing could run",
                   ".mp4", ".y4m", "invalid_input", "no_videos", "\\xff", "UTF-8"):
        assert needle in text, needle


def test_directory_walks_find_raw_streams_and_the_other_demuxable_kinds(tmp_path):
    names = ["a.h264", "b.hevc", "c.ivf", "d.3gp", "e.mts", "f.m2ts", "g.gif", "h.y4m", "i.mp4"]
    for name in names + ["notes.txt", "cover.png"]:
        (tmp_path / name).write_bytes(b"x")
    assert sorted(Path(p).name for p in expand_inputs([str(tmp_path)])) == sorted(names)


@pytest.mark.parametrize("argv", [
    ["--workers", "-1"], ["--batch", "0"], ["--threshold", "nan"], ["--ray-actors", "0"],
    ["--ray-gpus-per-actor", "-1"], ["--ray-decode-cpus", "0"], ["--max-pixels", "0"], ["--max-frames", "-5"],
    ["--max-decode-s", "-1"], ["--max-decode-s", "inf"], ["--stream", "x.mp4", "--window-s", "0"],
    ["--stream", "x.mp4", "--window-s", "nan"], ["--stream", "x.mp4", "--hop-s", "-1"],
])
def test_a_number_out_of_range_is_an_argument_error_before_a_model_loads(argv, capsys, monkeypatch):
    _no_model(monkeypatch)
    with pytest.raises(SystemExit) as done:
        main(argv if "--stream" in argv else ["x.mp4", *argv])
    assert done.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    option = next(a for a in argv if a.startswith("--") and a != "--stream")
    assert err[-1].startswith(f"qclip-score: error: argument {option}: must be "), err


def test_the_decode_limits_reach_the_engine_and_0_seconds_is_no_limit(monkeypatch, capsys):
    import qclip_engine.engine
    from qclip_engine.video.limits import DecodeLimits

    asked = []

    def engine(*args, **kwargs):  # stands in for QualityEngine: takes note, then fails as a bad model would
        asked.append(kwargs["limits"])
        raise QCLIPError("no model in this test", code="artifact_invalid")

    monkeypatch.setattr(qclip_engine.engine, "QualityEngine", engine)
    assert main(["x.mp4", "--max-pixels", "640", "--max-frames", "90", "--max-decode-s", "0"]) == 2
    assert main(["x.mp4"]) == 2
    assert asked == [DecodeLimits(max_pixels=640, max_frames=90, max_seconds=None),
                     DecodeLimits(max_pixels=defaults.MAX_PICTURE_PIXELS, max_frames=defaults.MAX_VIDEO_FRAMES,
                                  max_seconds=defaults.MAX_DECODE_S)]


def _codes(items):
    return [item.error.code if isinstance(item, InputError) else item for item in items]


def test_a_list_naming_itself_or_no_list_at_all_is_one_invalid_input_record_each(good, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("self.txt").write_text(f"@self.txt\n{good[0]}\n")
    Path("a.txt").write_text("@b.txt\n")
    Path("b.txt").write_text(f"@a.txt\n{good[1]}\n")
    Path("long.txt").write_text("x" * 5000 + "\n")
    Path("twice.txt").write_text(f"{good[2]}\n")
    items = list(expand_inputs(["@self.txt", "@a.txt", f"@{good[3]}", "@long.txt", "@twice.txt", "@twice.txt"]))
    assert _codes(items) == ["invalid_input", str(good[0]), "invalid_input", str(good[1]), "invalid_input",
                             "invalid_input", str(good[2]), str(good[2])]  # a list named twice side by side: twice
    assert [items[i].input for i in (0, 2, 4, 5)] == ["@self.txt", "@a.txt", f"@{good[3]}", "@long.txt"]
    assert "named again inside its own expansion (@self.txt → @self.txt)" in items[0].error.message
    assert "(@a.txt → @b.txt → @a.txt)" in items[2].error.message
    assert "NUL" in items[4].error.message and "longer than 4096 bytes" in items[5].error.message


def test_list_files_are_read_in_pieces_and_refused_past_their_size(tmp_path, monkeypatch):
    monkeypatch.setattr(inputs_cli, "LIST_READ_BYTES", 7)  # lines cross the pieces' edges
    entries = [f"clip{i}.mp4" for i in range(40)]
    listing = tmp_path / "list.txt"
    listing.write_text("\r\n".join(entries) + "\r\n# a note\n\n  last.mp4")
    assert list(expand_inputs([f"@{listing}"])) == [*entries, "last.mp4"]
    read, write = os.pipe()  # a pipe is read the same way (@<(find …))
    os.write(write, b"a.mp4\nb.mp4\n")
    os.close(write)
    try:
        assert list(expand_inputs([f"@/dev/fd/{read}"])) == ["a.mp4", "b.mp4"]
    finally:
        os.close(read)
    monkeypatch.setattr(inputs_cli, "MAX_LIST_BYTES", 100)
    [refused] = expand_inputs([f"@{listing}"])
    assert refused.error.code == "invalid_input" and "it holds more than" in refused.error.message


def test_dev_zero_as_a_list_is_refused_at_once_in_bounded_memory():
    import resource

    def two_gib():
        resource.setrlimit(resource.RLIMIT_AS, (2**31, 2**31))  # a whole read runs out of memory, not the machine

    code = "from qclip_engine.cli.score import expand_inputs; [m] = expand_inputs(['@/dev/zero']); print(m.error.code)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          preexec_fn=two_gib)
    assert done.returncode == 0 and done.stdout.strip() == "invalid_input", done.stderr[-2000:]


def test_unreadable_directories_are_permission_denied_records_never_skipped(tmp_path, monkeypatch):
    tree, shut = tmp_path / "tree", tmp_path / "shut"
    for folder in (tree / "ok", tree / "locked", shut):
        folder.mkdir(parents=True)
        (folder / "a.mp4").write_bytes(b"x")
    real_scandir = os.scandir

    def scandir(path="."):  # what a directory without read permission does to anyone but root
        if Path(path).name in ("locked", "shut"):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    items = list(expand_inputs([str(tree), str(shut)]))
    assert _codes(items) == ["permission_denied", str(tree / "ok" / "a.mp4"), "permission_denied"]
    assert [items[0].input, items[2].input] == [str(tree / "locked"), str(shut)]
    assert "cannot be read" in items[0].error.message


@pytest.mark.skipif(getattr(os, "geteuid", lambda: 0)() == 0, reason="root reads any directory: chmod 000 stops no one")
def test_a_chmod_000_directory_is_a_permission_denied_record(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "a.mp4").write_bytes(b"x")
    locked.chmod(0)
    try:
        assert _codes(expand_inputs([str(locked)])) == ["permission_denied"]
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize("spelling", ["same", "other_spelling", "symlink", "hard_link", "listed", "the_list",
                                      "to_be_created", "timeline"])
def test_an_output_naming_an_input_is_refused_before_anything_is_written(good, tmp_path, capsys, monkeypatch,
                                                                         spelling):
    _no_model(monkeypatch)
    video = tmp_path / "v.mp4"
    video.write_bytes(good[0].read_bytes())
    listing = tmp_path / "list.txt"
    listing.write_text(f"{video}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.mp4").symlink_to(video)
    os.link(video, tmp_path / "hard.mp4")
    later = tmp_path / "later.jsonl"
    argv = {
        "same": [str(video), "--out", str(video)],
        "other_spelling": [str(video), "--out", f"{tmp_path}/sub/../v.mp4"],
        "symlink": [str(video), "--out", str(tmp_path / "link.mp4")],
        "hard_link": [str(video), "--out", str(tmp_path / "hard.mp4")],
        "listed": [f"@{listing}", "--out", str(video)],
        "the_list": [f"@{listing}", "--out", str(listing)],
        "to_be_created": [str(later), "--out", str(later)],
        "timeline": ["--stream", str(video), "--timeline", str(video)],
    }[spelling]
    assert main(argv) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("qclip-score: --") and "is the input" in line, line
    assert video.read_bytes() == good[0].read_bytes() and listing.read_text() == f"{video}\n"
    assert not later.exists()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_a_timeline_that_cannot_be_written_is_one_line_and_exit_4_after_the_records(artifact, good, tmp_path, capsys):
    out = tmp_path / "windows.jsonl"
    code = main(["--stream", str(good[0]), "--artifact", str(artifact), "--engine", "torch", "--timeline", "/dev/full",
                 "--out", str(out), "--quiet"])
    assert code == 4
    assert capsys.readouterr().err.strip().splitlines() == [
        "qclip-score: --timeline /dev/full: could not be written: No space left on device"]
    assert all("score" in r for r in _records(out)) and _records(out)  # the windows were written before the plot


def test_a_closed_stdout_ends_the_run_quietly_with_status_141(artifact, tmp_path):
    listing = tmp_path / "many.txt"  # 800 not_found records: more than a pipe holds unread (64 KiB)
    listing.write_text("".join(f"{tmp_path}/missing-{i:04d}.mp4\n" for i in range(800)))
    argv = [sys.executable, "-m", "qclip_engine.cli.score", f"@{listing}", "--artifact", str(artifact), "--engine",
            "torch", "--quiet"]
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = child.stdout.read(20)  # as `qclip-score … | head -c 20` does
    child.stdout.close()
    err = child.stderr.read().decode()
    assert child.wait(timeout=300) == 141, err[-3000:]
    assert len(head) == 20
    for needle in ("Traceback", "Exception ignored", "BrokenPipe", "qclip-score:"):
        assert needle not in err, err[-3000:]


class _Result:
    def __init__(self, record):
        self.record = record

    def to_record(self):
        return self.record


class _FaultyEngine:
    """Stands in for QualityEngine where the records' writing is tested: scores its first input NaN,
    as a faulty backend would, and the others 0.5."""

    levels = ("bad", "poor", "fair", "good", "excellent")

    def score(self, paths):
        for i, path in enumerate(paths):
            value = float("nan") if i == 0 else 0.5
            yield _Result({"input": path, "score": value, "levels": dict.fromkeys(self.levels, value), "timing_ms": {}})


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_record_json_cannot_carry_is_that_inputs_internal_error_and_the_run_goes_on(tmp_path, monkeypatch, fmt):
    monkeypatch.setattr(score_cli, "build_engine", lambda args: _FaultyEngine())
    out = tmp_path / f"scores.{fmt}"
    assert main(["first.mp4", "second.mp4", "--format", fmt, "--out", str(out), "--quiet"]) == 3
    text = out.read_text(encoding="utf-8")
    assert "nan" not in text.lower() and "infinity" not in text.lower()
    if fmt == "jsonl":
        first, second = (json.loads(line, parse_constant=pytest.fail) for line in text.splitlines())
        code = first["error"]["code"]
    else:
        first, second = csv.DictReader(text.splitlines())
        code = first["error_code"]
    assert first["input"] == "first.mp4" and code == "internal_error"
    assert second["input"] == "second.mp4" and float(second["score"]) == 0.5


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_records_that_cannot_be_written_end_the_run_in_one_line_with_exit_4(monkeypatch, capsys, fmt):
    monkeypatch.setattr(score_cli, "build_engine", lambda args: _FaultyEngine())
    assert main(["first.mp4", "second.mp4", "--format", fmt, "--out", "/dev/full", "--quiet"]) == 4
    assert capsys.readouterr().err.strip().splitlines() == [
        "qclip-score: --out /dev/full: could not be written: No space left on device"]
