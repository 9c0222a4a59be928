"""Batch scoring on Ray Data (qclip_engine/cluster/batch.py) on a local Ray cluster the module starts
and stops: the records equal the local engine's, one per input, in input order after a killed
scoring actor, and a poison input that kills its worker every time ends as its own error record."""

import json

import numpy as np
import pytest
from conftest import tiny_model
from media import encode, moving_frames

ray = pytest.importorskip("ray")

from qclip_engine import QualityEngine, save_artifact  # noqa: E402
from qclip_engine.cluster.batch import (CRASH_HOOK, RayOptions, ScoreActor, _model_settings, decode_batch,  # noqa: E402
                                        ordered_records, score_dataset)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local Ray cluster (4 logical CPUs on this 2-core machine); the crash hook disarmed."""
    marker = tmp_path_factory.mktemp("hook") / "actor-exited"
    marker.touch()  # the actor-exit hook is armed by removing it
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {CRASH_HOOK: json.dumps({"exit_on_batch": 2, "marker": str(marker),
                                                               "poison": "poison"})}})
    yield marker
    ray.shutdown()
    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """An artifact and a list mixing good clips with broken inputs."""
    root = tmp_path_factory.mktemp("ray")
    artifact = save_artifact(tiny_model("segment_mse_mean"), root / "artifact")
    paths = []
    for i in range(7):
        paths.append(str(encode(root / f"clip{i}.mp4", moving_frames(10 + i, h=48, w=64, seed=i))))
    (root / "text.mp4").write_text("not a video")
    (root / "empty.mp4").write_bytes(b"")
    paths[2:2] = [str(root / "text.mp4"), str(root / "missing.mp4")]
    paths.append(str(root / "empty.mp4"))
    return artifact, paths


def _comparable(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("timing_ms", "score", "mos", "levels")}


def _local(artifact, paths) -> list[dict]:
    engine = QualityEngine(artifact, engine="torch", device="cpu", batch=3)
    return [r.to_record() for r in engine.score(paths)]


def _check_equal(records: list[dict], expected: list[dict]) -> None:
    assert [r["input"] for r in records] == [r["input"] for r in expected]
    for got, want in zip(records, expected):
        assert _comparable(got) == _comparable(want)
        if "score" in want:
            assert got["score"] == pytest.approx(want["score"], abs=1e-5)
            assert np.allclose(list(got["levels"].values()), list(want["levels"].values()), atol=1e-5)


def test_ray_records_equal_the_local_engines_one_per_input_in_input_order(cluster, job):
    """(two actors here; the killed-actor test below runs one)"""
    artifact, paths = job
    options = RayOptions(engine="torch", device="cpu", batch=3, actors=2)
    done = score_dataset(paths, artifact, options)
    assert done.count() == len(paths)
    records = ordered_records(done)
    _check_equal(records, _local(artifact, paths))
    assert sum("error" in r for r in records) == 3
    assert sorted(row["id"] for row in done.take_all()) == list(range(len(paths)))


def test_decoding_inside_the_scoring_actor_gives_the_same_records(cluster, job):
    """The device path's layout (decode and score in one actor, frames never crossing the host), run
    here with the host decoder: one stage, the same records."""
    artifact, paths = job
    done = score_dataset(paths, artifact, RayOptions(engine="torch", device="cpu", batch=3, fused=True))
    _check_equal(ordered_records(done), _local(artifact, paths))


def test_a_killed_scoring_actor_loses_and_repeats_nothing(cluster, job):
    artifact, paths = job
    cluster.unlink()  # arm: the first actor to reach its 2nd batch exits, once
    done = score_dataset(paths, artifact, RayOptions(engine="torch", device="cpu", batch=2, actors=1))
    assert cluster.exists(), "the hook never fired: no actor was killed"
    ids = [row["id"] for row in done.take_all()]
    assert sorted(ids) == list(range(len(paths)))  # every record exactly once
    _check_equal(ordered_records(done), _local(artifact, paths))


def test_a_poison_input_ends_as_worker_crashed_and_the_rest_are_scored(cluster, job, tmp_path):
    artifact, paths = job
    poison = str(encode(tmp_path / "poison.mp4", moving_frames(8, h=48, w=64, seed=9)))
    inputs = paths[:3] + [poison] + paths[3:]
    done = score_dataset(inputs, artifact, RayOptions(engine="torch", device="cpu", batch=3, max_retries=1))
    records = ordered_records(done)
    assert len(records) == len(inputs)
    assert records[3]["input"] == poison and records[3]["error"]["code"] == "worker_crashed"
    _check_equal(records[:3] + records[4:], _local(artifact, paths))


def test_a_directory_a_manifest_and_a_dataset_are_inputs_too(cluster, job, tmp_path):
    from qclip_engine.cluster.batch import input_rows

    artifact, paths = job
    manifest = tmp_path / "list.txt"
    manifest.write_text("# clips\n" + "\n".join(paths[:3]) + "\n")
    assert input_rows(manifest) == [{"id": i, "path": p} for i, p in enumerate(paths[:3])]
    folder = tmp_path / "videos"
    (folder / "sub").mkdir(parents=True)
    for name in ("b.mp4", "sub/a.mkv", "notes.txt"):
        (folder / name).write_bytes(b"x")
    assert input_rows(folder) == [{"id": 0, "path": str(folder / "b.mp4")}, {"id": 1, "path": str(folder / "sub/a.mkv")}]
    good = [p for p in paths if "clip" in p]
    ds = ray.data.from_items([{"path": p} for p in good[:3]])
    done = score_dataset(ds, artifact, RayOptions(engine="torch", device="cpu", batch=2))
    assert sorted(row["id"] for row in done.take_all()) == sorted(good[:3])  # the path is the id
    # and the records go where Ray writes: shards of {id, input, record}
    done.write_json(str(tmp_path / "out"))
    rows = [json.loads(line) for f in sorted((tmp_path / "out").glob("*.json")) for line in f.read_text().splitlines()]
    assert sorted(json.loads(r["record"])["input"] for r in rows) == sorted(good[:3])


def test_qclip_score_ray_writes_the_records_the_local_run_writes(cluster, job, tmp_path):
    from qclip_engine.cli.score import main

    artifact, paths = job
    inputs = paths[:4] + [" "]  # a blank input is an invalid_input record in its place, as locally
    common = ["--artifact", str(artifact), "--engine", "torch", "--device", "cpu", "--batch", "2", "--quiet"]
    assert main(inputs + common + ["--out", str(tmp_path / "local.jsonl")]) == 3
    assert main(inputs + common + ["--out", str(tmp_path / "ray.jsonl"), "--ray", "local"]) == 3
    local, on_ray = ([json.loads(line) for line in (tmp_path / name).read_text().splitlines()]
                     for name in ("local.jsonl", "ray.jsonl"))
    _check_equal(on_ray, local)
    assert on_ray[-1]["error"]["code"] == "invalid_input"
    assert main(inputs + common + ["--ray", "local", "--ray-output", str(tmp_path / "shards"),
                                   "--ray-output-format", "parquet"]) == 3
    import pyarrow.parquet as pq

    table = pq.read_table(str(tmp_path / "shards"))
    assert sorted(table.column("id").to_pylist()) == list(range(5))


def test_the_decode_limits_reach_the_decode_tasks_and_the_scoring_actors(job):
    """RayOptions' limits (qclip-score --max-frames …) are what both stages decode under (no cluster
    needed: the stages are plain functions and classes)."""
    artifact, paths = job
    limited = RayOptions(engine="torch", device="cpu", max_frames=5)
    out = decode_batch({"id": [0, 1], "path": [paths[0], paths[1]]}, _model_settings(str(artifact), limited))
    assert [json.loads(r)["error"]["code"] for r in out["record"]] == ["too_many_frames"] * 2
    assert decode_batch({"id": [0], "path": [paths[0]]}, _model_settings(str(artifact), RayOptions()))["record"] == [""]
    actor = ScoreActor(str(artifact), {**limited.__dict__, "fused": True})  # decoding in the actor: its engine's limits
    assert json.loads(actor({"id": np.array([0]), "path": np.array([paths[0]])})["record"][0])["error"]["code"] \
        == "too_many_frames"
