"""The user cache shared by processes started together (``runtime/cache_files.py``): an entry is
built once, by one process, the others wait and use it; no reader ever sees a partial file; a
failed or killed builder leaves neither a file nor a lock. Builds here are cheap fakes that write
slowly (forked processes: no model, no export)."""

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from qclip_engine.runtime import base, cpu_choice, onnx_graph, quantize
from qclip_engine.runtime.cache_files import atomic_write, build_once
from qclip_engine.runtime.cpu_choice import Candidate, choose_cpu_backend
from qclip_engine.runtime.cpu_features import CpuIdentity
from qclip_engine.runtime.onnxruntime_backend import OnnxRuntimeBackend

fork = multiprocessing.get_context("fork")  # the children inherit the fakes below; nothing is re-imported
CHUNKS = 20  # a fake build writes its file in this many pieces, CHUNK_S apart
CHUNK_S = 0.01


def slow_writer(log: Path, what: str):
    """A build that notes ``what`` and this pid in ``log``, then writes ``what`` × CHUNKS slowly."""

    def write(path):
        with open(log, "a") as f:
            f.write(f"{what} {os.getpid()}\n")
        with open(path, "w") as f:
            for _ in range(CHUNKS):
                f.write(what)
                f.flush()
                time.sleep(CHUNK_S)
        return path

    return write


def together(n: int, job) -> list:
    """Run ``job()`` in ``n`` forked processes released at the same moment; their return values."""
    go, results = fork.Event(), fork.Queue()

    def child():
        go.wait()
        try:
            results.put(("ok", job()))
        except BaseException as exc:  # the parent's assertion says what went wrong
            results.put(("error", repr(exc)))

    procs = [fork.Process(target=child) for _ in range(n)]
    for p in procs:
        p.start()
    go.set()
    answers = [results.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=10)
    assert all(kind == "ok" for kind, _ in answers), answers
    return [value for _, value in answers]


def builders(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_two_processes_build_one_entry_once_and_a_reader_never_sees_it_partial(tmp_path):
    entry, log = tmp_path / "cache" / "entry.bin", tmp_path / "builds.log"
    whole = "x" * CHUNKS
    go, results = fork.Event(), fork.Queue()

    def child():
        go.wait()
        results.put(Path(build_once(entry, slow_writer(log, "x"))).read_text())

    procs = [fork.Process(target=child) for _ in range(2)]
    for p in procs:
        p.start()
    go.set()
    seen = set()
    while any(p.is_alive() for p in procs):  # a reader beside the builders
        if entry.exists():
            seen.add(entry.read_text())
    assert [results.get(timeout=10) for _ in procs] == [whole, whole]  # both use the complete file
    assert len(builders(log)) == 1  # built once
    assert seen <= {whole}  # whenever the entry was there, it was whole
    assert sorted(p.name for p in entry.parent.iterdir()) == ["entry.bin", "entry.bin.lock"]  # no temporaries


def test_the_onnx_graphs_are_exported_and_quantized_once_across_processes(tmp_path, monkeypatch):
    # Three ``qclip-score --engine auto`` runs on an empty cache: the FP32 and INT8 graphs of the
    # ONNX Runtime backend (runtime/onnxruntime_backend.py), with the export and the quantization faked.
    log = tmp_path / "builds.log"
    monkeypatch.setattr(base, "export_cache_dir", lambda model: tmp_path / "cache" / "exports" / "key")
    monkeypatch.setattr("qclip_engine.model.families.deployable", lambda model, dtype: None)
    monkeypatch.setattr(onnx_graph, "export_onnx", lambda module, path: slow_writer(log, "g")(path))
    monkeypatch.setattr(quantize, "quantize_int8", lambda fp32, out: slow_writer(log, "q")(out))

    def job():
        int8 = OnnxRuntimeBackend._graph(None, None, "int8")
        fp32 = OnnxRuntimeBackend._graph(None, None, "fp32")
        return fp32.read_text(), int8.read_text()

    assert together(3, job) == [("g" * CHUNKS, "q" * CHUNKS)] * 3
    assert sorted(line.split()[0] for line in builders(log)) == ["g", "q"]  # each graph built by one process
    assert sorted(p.name for p in (tmp_path / "cache" / "exports" / "key").iterdir()) == [
        "model.int8.onnx", "model.int8.onnx.lock", "model.onnx", "model.onnx.lock"]


def test_the_cpu_choice_is_measured_once_across_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("QCLIP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cpu_choice, "cache_key", lambda *args, **kwargs: "key")
    model = SimpleNamespace(image_size=(8, 8), config=SimpleNamespace(num_frames=2))
    log = tmp_path / "timed.log"

    class Built:
        def __init__(self, candidate: Candidate):
            self.label = candidate.label

        def run(self, frames):
            return None

    def timer(run, frames):  # slow, and noted: who measured
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.02)
        return {"torch-fp32": 1.0, "onnxruntime-fp32": 2.0}[run.__self__.label]

    cpu = CpuIdentity("old x86", frozenset({"avx2"}))
    labels = together(3, lambda: choose_cpu_backend(model, Built, artifact_dir=None, cpu=cpu, timer=timer).label)
    assert labels == ["onnxruntime-fp32"] * 3
    assert len(set(builders(log))) == 1  # one process measured, the others read its choice
    assert json.loads((tmp_path / "cache" / "cpu_choice" / "key.json").read_text())["choice"] == "onnxruntime-fp32"


def test_a_failed_or_killed_build_leaves_no_file_and_no_lock(tmp_path):
    entry, log = tmp_path / "entry.bin", tmp_path / "builds.log"

    def failing(path):
        path.write_text("half")
        raise RuntimeError("the export failed")

    with pytest.raises(RuntimeError, match="export failed"):
        build_once(entry, failing)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry.bin.lock"]
    # A builder killed mid-write (SIGKILL: no cleanup) holds the lock no more; the next one builds.
    started = fork.Event()

    def stuck(path):
        path.write_text("half")
        started.set()
        time.sleep(60)

    child = fork.Process(target=build_once, args=(entry, stuck))
    child.start()
    assert started.wait(10)
    os.kill(child.pid, signal.SIGKILL)
    child.join(10)
    assert build_once(entry, slow_writer(log, "y")).read_text() == "y" * CHUNKS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["builds.log", "entry.bin", "entry.bin.lock"]


def test_files_written_beside_the_entry_move_in_before_it(tmp_path):
    # ONNX external data (a graph over 1.5 GB) is written beside the graph and named after it.
    def graph_and_data(path):
        path.with_name(path.name + ".data").write_text("weights")
        path.write_text("graph")

    atomic_write(tmp_path / "model.onnx", graph_and_data)
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"model.onnx": "graph", "model.onnx.data": "weights"}
