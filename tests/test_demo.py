"""The README's first command, in its quick form: dataset → untrained metrics → training →
ONNX export → scoring through qclip-score → the recorded result."""

import json

from qclip_engine.train import demo


def _strings(node):
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    elif isinstance(node, str):
        yield node


def test_quick_demo_runs_offline_ships_its_artifact_and_labels_its_numbers_honestly(tmp_path, capsys, monkeypatch):
    result_path = tmp_path / "results" / "demo.json"
    monkeypatch.setattr(demo, "RESULT", result_path)
    out_dir = tmp_path / "demo"
    assert demo.main(["--out", str(out_dir), "--quick", "--record-benchmark"]) == 0
    out = capsys.readouterr().out
    assert "RANDOM-BACKBONE" in out and "not a measurement" in out
    assert "untrained (same init)" in out and "trained, last epoch" in out
    assert [f"{i}/5" for i in range(1, 6)] == [line[:3] for line in out.splitlines() if line[1:3] == "/5"]
    best = out_dir / "run" / "best"
    assert (best / "adapters.safetensors").is_file()
    assert (best / "model.onnx").is_file() and (best / "parity_onnx.json").is_file()
    assert (best / "model.int8.onnx").is_file()  # and the drift that --precision auto requires:
    assert set(json.loads((best / "precision.json").read_text())["precisions"]) == {"bf16", "int8"}

    # qclip-score wrote one record per held-out clip, each with a score
    heldout = (out_dir / "data" / "labels_test.txt").read_text().splitlines()
    records = [json.loads(line) for line in (out_dir / "scores.jsonl").read_text().splitlines()]
    assert sorted(r["input"].rsplit("/", 1)[-1] for r in records) == sorted(line.split(",")[0] for line in heldout)
    assert all("error" not in r and isinstance(r["score"], float) for r in records)
    assert {r["backend"] for r in records} == {"onnxruntime-fp32"}
    assert f"{out_dir / 'scores.jsonl'}" in out and "videos/s" in out

    result = json.loads(result_path.read_text())
    assert json.loads((out_dir / "demo.json").read_text()) == result  # the run's own record, in --out
    assert result["benchmark"] == "demo" and result["machine"]["cores"] and result["versions"]["onnxruntime"]
    assert result["scoring"]["records"] == "scores.jsonl" and result["scoring"]["videos"] == len(heldout)
    assert result["scoring"]["videos_per_s"] > 0 and result["export_s"] > 0
    assert result["onnx_graph"] == "run/best/model.onnx" and result["precision_drift"] == "run/best/precision.json"
    assert result["config"]["data"]["data_root"] == "data" and result["config"]["output_dir"] == "run"
    assert result["out_dir"] is None  # outside the checkout: not recorded
    assert not [s for s in _strings(result) if s.startswith("/") or str(tmp_path) in s]


def test_a_bad_override_stops_the_demo_before_any_work_with_one_line(tmp_path, capsys):
    assert demo.main(["--out", str(tmp_path / "demo"), "--quick", "--no-record", "model.no_such_setting=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("train.demo: unknown model settings ['no_such_setting']") and err.count("\n") == 1
    assert not (tmp_path / "demo").exists()


def test_without_the_export_extra_the_demo_says_what_to_install_before_any_work(tmp_path, capsys, monkeypatch):
    find_spec = demo.importlib.util.find_spec
    monkeypatch.setattr(demo.importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else find_spec(name, *a))
    assert demo.main(["--out", str(tmp_path / "demo"), "--quick", "--no-record"]) == 2
    err = capsys.readouterr().err
    assert err == "train.demo: exporting and scoring the demo's artifact needs onnxscript: pip install -e '.[demo,export]'\n"
    assert not (tmp_path / "demo").exists()


def test_the_demo_records_under_its_out_folder_and_the_checkout_only_for_a_benchmark_run(tmp_path):
    assert demo.record_paths(tmp_path / "demo", record_benchmark=False) == [tmp_path / "demo" / "demo.json"]
    assert demo.record_paths(tmp_path / "demo", record_benchmark=True) == [tmp_path / "demo" / "demo.json", demo.RESULT]
    assert demo.RESULT == demo.ROOT / "benchmarks" / "results" / "demo.json"
