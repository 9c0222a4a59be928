"""qclip-score: one record per input whatever the input, inputs expanded as users write them, exit codes."""

import csv
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
from qclip_engine.cli.score import _parser, expand_inputs, main, printable

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
    monkeypatch.setattr(score_cli, "_engine", lambda args: pytest.fail("a model was loaded despite a bad argument"))


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
