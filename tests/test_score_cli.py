"""qclip-score: one record per input whatever the input, inputs expanded as users write them, exit codes."""

import csv
import json
import subprocess
import sys

import pytest
from media import broken_corpus, encode, moving_frames, odd_but_valid
from conftest import tiny_model

from qclip_engine import save_artifact
from qclip_engine.cli.score import expand_inputs, main

ERROR_CODES = {"not_found", "empty_file", "not_a_video", "audio_only", "unsupported_codec", "truncated", "decode_failed"}


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


def test_corpus_of_odd_and_broken_inputs_gives_one_record_each_and_exit_3(artifact, good, tmp_path):
    from media import audio_only

    corpus = broken_corpus(tmp_path, good) + odd_but_valid(tmp_path) + [audio_only(tmp_path / "tone.m4a")] + good
    assert len(corpus) >= 50
    listing = tmp_path / "inputs.txt"
    listing.write_text("\n".join(map(str, corpus)) + "\n")
    out = tmp_path / "scores.jsonl"
    # A separate process: a crash inside FFmpeg would kill it rather than pass unnoticed.
    done = subprocess.run(
        [sys.executable, "-m", "qclip_engine.cli.score", f"@{listing}", "--artifact", str(artifact),
         "--engine", "torch", "--batch", "8", "--out", str(out), "--quiet"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 3, done.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["input"] for r in records] == [str(p) for p in corpus]  # one each, in order
    by_name = {p.name: r for p, r in zip(corpus, records)}
    for r in records:
        assert ("score" in r) != ("error" in r)
        if "error" in r:
            assert r["error"]["code"] in ERROR_CODES and r["error"]["message"]
    for name in ("one_frame.mp4", "gray.mkv", "odd_17x9.mkv", "rotated.mp4", "vfr.mkv", "a.mp4", "b.webm", "c.mkv", "d.avi"):
        assert "score" in by_name[name], by_name[name]
    assert by_name["one_frame.mp4"]["frames"] == [0, 0, 0, 0]  # repeated when fewer frames than K
    assert by_name["zero.mp4"]["error"]["code"] == "empty_file"
    assert by_name["missing.mp4"]["error"]["code"] == "not_found"
    assert by_name["tone.m4a"]["error"]["code"] == "audio_only"
    assert any(r["error"]["code"] == "truncated" for r in records if "error" in r)
    assert "failed" in done.stderr


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
