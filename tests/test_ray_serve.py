"""The app of qclip-serve on Ray Serve replicas (qclip_engine/cluster/serve_app.py), end to end on
a real local Ray cluster that this module starts (2 CPUs) and stops, with a tiny random-init
artifact.

Order matters, and is the file's: ``qclip-serve --ray ADDRESS`` first (it deploys, serves and
deletes the application ``qclip`` on the module's cluster), then the module's own deployment of
two replicas (the ``app`` fixture) for scoring, spreading, error codes and the replacement of a
killed replica, and last Ray Serve's shutdown. The replicas of the ``app`` fixture are the
production class with one addition: after the destructor Ray Serve calls (which runs the app's
lifespan shutdown), each writes down what its service looked like, so the test can see that the
model stopped in every replica. About 70 s on 2 cores, most of it replicas loading the model.
"""

import ast
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import tiny_model
from media import encode, moving_frames
from qclip_engine import save_artifact

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from qclip_engine.cluster import serve_app  # noqa: E402  (after the skip: needs the ray extra)
from qclip_engine.serve.settings import ServeSettings  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CLIENT_TIMEOUT_S = 30.0
DEADLINE_S = 120.0
UPLOAD_MB = 1
HEADER = serve_app.REPLICA_HEADER


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(method: str, url: str, client: httpx.Client | None = None, **kwargs) -> httpx.Response:
    try:
        return (client or httpx).request(method, url, timeout=CLIENT_TIMEOUT_S, **kwargs)
    except httpx.TimeoutException as exc:
        pytest.fail(f"no answer within {CLIENT_TIMEOUT_S} s: {method} {url}: {exc!r}")


def upload(url: str, path: Path, client: httpx.Client | None = None) -> httpx.Response:
    return request("POST", url + "/v1/score", client, files={"file": (path.name, path.read_bytes())})


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"], error
    assert response.headers[HEADER], "an error answer without the replica's id"
    return error


def replica_actors() -> set[str]:
    """The ids of the Ray Serve replica actors alive on the cluster (named SERVE_REPLICA::app#deployment#id)."""
    return {actor["name"].rsplit("#", 1)[1] for actor in ray.util.list_named_actors(all_namespaces=True)
            if actor["name"].startswith("SERVE_REPLICA::")}


def metrics_of(url: str, replicas: set[str]) -> dict[str, dict[str, list]]:
    """Each replica's /metrics (replica id → samples by name): asked until every replica answered."""
    out: dict[str, dict[str, list]] = {}
    for _ in range(200):
        response = request("GET", url + "/metrics")
        assert response.status_code == 200
        samples: dict[str, list] = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                samples.setdefault(sample.name, []).append(sample)
        replica = response.headers[HEADER]
        [info] = samples["qclip_replica_info"]
        assert info.labels["replica"] == replica and info.value == 1  # the registry is the answering replica's
        out[replica] = samples
        if set(out) >= replicas:
            return out
    pytest.fail(f"/metrics never answered from every replica: {sorted(replicas)} vs {sorted(out)}")


def value(samples: dict, name: str, **labels) -> float:
    return sum(s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items()))


def wait_until(predicate, what: str, deadline_s: float = DEADLINE_S):
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.1)
    pytest.fail(f"not within {deadline_s} s: {what}")


def answers(url: str) -> bool:
    try:
        httpx.get(url + "/-/healthz", timeout=2)
        return True
    except httpx.TransportError:
        return False


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    return save_artifact(tiny_model(num_frames=2), tmp_path_factory.mktemp("ray_serve") / "artifact")


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    root = Path(os.path.realpath(tmp_path_factory.mktemp("ray_media")))
    allowed, outside = root / "allowed", root / "outside"
    allowed.mkdir()
    outside.mkdir()
    good = [encode(allowed / f"good{i}.mp4", moving_frames(12, seed=i)) for i in range(3)]
    (allowed / "notes.mp4").write_text("not a video, just text\n")
    return {"allowed": allowed, "secret": encode(outside / "secret.mp4", moving_frames(12, seed=9)),
            "good": good, "notes": allowed / "notes.mp4", "root": root}


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of 2 CPUs and Ray Serve's proxy on a free port; both stopped at the end."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield {"url": f"http://127.0.0.1:{port}", "port": port,
               "address": ray.get_runtime_context().gcs_address}
    finally:
        serve.shutdown()
        ray.shutdown()


def settings_for(artifact: Path, media: dict) -> ServeSettings:
    return ServeSettings(artifact=artifact, engine="torch", device="cpu", batch=4, workers=1,
                         allow_dirs=(media["allowed"],), max_upload_bytes=UPLOAD_MB * 2**20, queue=64,
                         timeout_s=30.0, batch_wait_s=0.02)


@pytest.fixture(scope="module")
def app(cluster, artifact, media, tmp_path_factory):
    """Two replicas of the production deployment, each recording its service after Ray Serve's shutdown."""
    stopped = tmp_path_factory.mktemp("stopped")
    deployment = serve_app.replica_deployment(settings_for(artifact, media), replicas=2, num_cpus=0.5)

    class RecordsItsStop(deployment.func_or_class):
        async def __del__(self):
            await super().__del__()  # Ray Serve's: the app's lifespan shutdown
            from ray import serve as replica_serve

            service = self.app.state.service
            name = replica_serve.get_replica_context().replica_id.unique_id
            (stopped / f"{name}.json").write_text(json.dumps(
                {"stopping": service.stopping, "model_thread": service.batcher.running}))

    serve.run(deployment.options(func_or_class=RecordsItsStop).bind(), name=serve_app.APP_NAME, route_prefix="/")
    return {"url": cluster["url"], "stopped": stopped, "replicas": replica_actors()}


# -- without a cluster ----------------------------------------------------------------------


def test_ray_is_imported_by_the_cluster_room_only():
    probe = (
        "import runpy, sys\n"
        "import qclip_engine\n"
        "sys.argv = ['qclip-serve', '--help']\n"
        "try:\n"
        "    runpy.run_module('qclip_engine.cli.serve', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        "print('ray imported:', sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n"
        "from qclip_engine.cluster import serve_app\n"  # the driver of qclip-serve --ray: no model, no torch
        "print('torch imported by the driver:', 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env=os.environ | {"HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--ray ADDRESS" in done.stdout and "--replicas" in done.stdout
    assert "ray imported: []\n" in done.stdout, done.stdout[-500:]
    assert done.stdout.strip().endswith("torch imported by the driver: False"), done.stdout[-500:]
    # (that no module but cluster/'s imports ray is an import-linter contract: tests/test_architecture.py)


def test_the_health_check_waits_for_the_model_then_follows_readiness(tmp_path, monkeypatch):
    """What Ray Serve's health check of a replica sees, on the real QualityService with a fake engine:
    the first check waits while the model loads, a model that cannot load fails it, so does a stopped one."""
    from serve_fakes import FakeEngine, fake_settings, make_tree

    from qclip_engine.serve import service as service_module
    from qclip_engine.serve.service import QualityService

    class SlowEngine(FakeEngine):
        def __init__(self, artifact, **kwargs):
            time.sleep(0.3)

    class BrokenEngine(FakeEngine):
        def __init__(self, artifact, **kwargs):
            raise FileNotFoundError("no artifact in /nowhere")

    async def health(service) -> str | None:
        try:
            await serve_app.wait_ready(service)
        except RuntimeError as exc:
            return str(exc)
        return None

    async def scenario(engine, tree) -> tuple[str | None, float, str | None]:
        monkeypatch.setattr(service_module, "QualityEngine", engine)
        service = QualityService(fake_settings(tree))
        service.start()
        started = time.monotonic()
        first = await health(service)
        waited = time.monotonic() - started
        await service.stop()
        return first, waited, await health(service)

    loaded, waited, stopped = asyncio.run(asyncio.wait_for(scenario(SlowEngine, make_tree(tmp_path / "a")), 30))
    assert loaded is None and waited >= 0.3  # it waited for the model, then passed
    assert stopped and "shutting down" in stopped
    failed, _, _ = asyncio.run(asyncio.wait_for(scenario(BrokenEngine, make_tree(tmp_path / "b")), 30))
    assert failed and "no artifact in /nowhere" in failed


def test_replica_options_without_ray_are_refused(tmp_path):
    done = subprocess.run([sys.executable, "-m", "qclip_engine.cli.serve", str(tmp_path), "--replicas", "2"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2 and "need --ray" in done.stderr
    done = subprocess.run([sys.executable, "-m", "qclip_engine.cli.serve", str(tmp_path), "--ray", "local",
                           "--replicas", "3", "--max-replicas", "2"], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert done.returncode == 2 and "--max-replicas must be ≥ --replicas" in done.stderr


def test_app_builder_arguments_become_settings_and_deployment_options(tmp_path):
    args = {"artifact": str(tmp_path), "batch": "8", "allow_dirs": f"{tmp_path}/a,{tmp_path}/b", "strict": "true",
            "workers": "none", "timeout-s": "12.5"}
    settings = serve_app.settings_from_strings(args)
    assert settings == ServeSettings(artifact=tmp_path, batch=8, allow_dirs=(tmp_path / "a", tmp_path / "b"),
                                     strict=True, workers=None, timeout_s=12.5)
    fixed = serve_app.deployment_options(settings, replicas=2, num_cpus=0.5, num_gpus=0.25)
    assert fixed["num_replicas"] == 2 and "autoscaling_config" not in fixed
    assert fixed["ray_actor_options"] == {"num_cpus": 0.5, "num_gpus": 0.25}
    assert fixed["max_ongoing_requests"] == settings.queue_limit + settings.max_uploads
    scaled = serve_app.deployment_options(settings, replicas=1, max_replicas=4)
    assert "num_replicas" not in scaled
    assert scaled["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8}
    # serve run hands the builder one dict of strings and wants an Application back.
    built = serve_app.app_builder({**args, "replicas": "2", "num_cpus": "0.5"})
    assert isinstance(built, serve.Application)
    for bad in ({"batch": "8"}, {**args, "batches": "8"}, {**args, "batch": "many"}, {**args, "strict": "maybe"}):
        with pytest.raises(ValueError):
            serve_app.app_builder(bad)
    with pytest.raises(ValueError):
        serve_app.app_builder({**args, "replicas": "3", "max_replicas": "2"})


# -- qclip-serve --ray -----------------------------------------------------------------------


def test_qclip_serve_ray_deploys_serves_and_leaves_nothing_on_sigterm(cluster, artifact, media, tmp_path):
    assert serve_app.APP_NAME not in serve.status().applications  # this test runs before the app fixture
    url = cluster["url"]
    log = tmp_path / "cli.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "qclip_engine.cli.serve", str(artifact), "--ray", cluster["address"],
             "--replicas", "1", "--replica-cpus", "0.5", "--port", str(cluster["port"]), "--engine", "torch",
             "--device", "cpu", "--workers", "1", "--log-level", "warning"],
            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    try:
        def ready():
            assert proc.poll() is None, log.read_text(errors="replace")
            try:
                return httpx.get(url + "/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, "qclip-serve --ray ready")
        [replica] = replica_actors()
        response = upload(url, media["good"][0])
        assert response.status_code == 200, response.text
        assert response.json()["input"] == "good0.mp4" and response.headers[HEADER] == replica
        # The paths are the replicas' and there is no --allow-dir: path requests are refused as by qclip-serve.
        assert_error(request("POST", url + "/v1/score", json={"path": str(media["good"][0])}), 403,
                     "path_not_allowed")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert serve_app.APP_NAME not in serve.status().applications
    assert replica_actors() == set()


# -- the module's deployment: two replicas ----------------------------------------------------


def test_two_replicas_score_an_upload_and_an_allowed_path(app, media):
    assert len(app["replicas"]) == 2
    ready = request("GET", app["url"] + "/readyz")
    assert ready.status_code == 200 and ready.json()["backend"] == "torch", ready.text

    response = upload(app["url"], media["good"][0])
    assert response.status_code == 200, response.text
    record = response.json()
    assert record["input"] == "good0.mp4" and isinstance(record["score"], float)
    assert record["timing_ms"]["upload"] >= 0 and response.headers[HEADER] in app["replicas"]

    response = request("POST", app["url"] + "/v1/score", json={"path": "good1.mp4"})
    assert response.status_code == 200, response.text
    assert response.json()["input"] == "good1.mp4" and "upload" not in response.json()["timing_ms"]
    # The same file scores the same whichever way it comes in and whichever replica scores it.
    again = upload(app["url"], media["good"][1])
    assert again.json()["score"] == pytest.approx(response.json()["score"], abs=1e-6)


def test_load_is_spread_over_both_replicas_and_each_counts_its_own(app, media):
    replicas = app["replicas"]
    before = metrics_of(app["url"], replicas)
    n = 32
    start = threading.Barrier(n)

    def fire(i):
        start.wait()
        if i % 2:
            return request("POST", app["url"] + "/v1/score", client, json={"path": f"good{i % 3}.mp4"})
        return upload(app["url"], media["good"][i % 3], client)

    with httpx.Client(limits=httpx.Limits(max_connections=n)) as client, ThreadPoolExecutor(n) as pool:
        responses = list(pool.map(fire, range(n)))
    assert [r.status_code for r in responses] == [200] * n, [r.text for r in responses if r.status_code != 200]
    served = Counter(r.headers[HEADER] for r in responses)
    assert set(served) == replicas, served  # both replicas took a share

    after = metrics_of(app["url"], replicas)
    for replica in replicas:
        def delta(name, **labels):
            return value(after[replica], name, **labels) - value(before[replica], name, **labels)

        assert delta("qclip_videos_scored_total") == served[replica], replica
        assert delta("qclip_requests_total", endpoint="/v1/score", status="200") == served[replica], replica
        assert delta("qclip_batch_size_sum") == served[replica], replica
        # The model each replica loaded in its lifespan startup.
        assert value(after[replica], "qclip_backend_info", backend="torch", precision="fp32", device="cpu") == 1


def test_bad_inputs_get_the_status_and_code_of_qclip_serve(app, media):
    url = app["url"] + "/v1/score"
    error = assert_error(upload(app["url"], media["notes"]), 422, "not_a_video")
    assert "notes.mp4" in error["message"] and "qclip-upload-" not in error["message"]
    assert_error(request("POST", url, json={"path": "../outside/secret.mp4"}), 403, "path_not_allowed")
    assert_error(request("POST", url, json={"path": str(media["secret"])}), 403, "path_not_allowed")
    error = assert_error(request("POST", url, json={"path": "missing.mp4"}), 422, "not_found")
    assert str(media["allowed"]) not in error["message"]
    assert_error(request("POST", url, content=b"{not json", headers={"content-type": "application/json"}),
                 400, "invalid_json")
    assert_error(request("POST", url, content=b"hello", headers={"content-type": "text/plain"}),
                 415, "unsupported_media_type")
    big = os.urandom(int(1.5 * UPLOAD_MB * 2**20))
    assert_error(request("POST", url, files={"file": ("big.mp4", big)}), 413, "upload_too_large")
    assert_error(request("GET", url), 405, "method_not_allowed")
    assert_error(request("GET", app["url"] + "/nope"), 404, "not_found")


def test_a_killed_replica_is_replaced_by_ray_serve(app, media):
    victim = sorted(app["replicas"])[0]
    ray.kill(ray.get_actor(f"SERVE_REPLICA::{serve_app.APP_NAME}#{serve_app.DEPLOYMENT_NAME}#{victim}",
                           namespace="serve"), no_restart=True)

    def replaced() -> set[str] | None:
        ids = replica_actors()
        return ids if len(ids) == 2 and victim not in ids else None

    survivors = wait_until(replaced, "a new replica in place of the killed one")
    [newcomer] = survivors - app["replicas"]

    def running() -> bool:
        deployment = serve.status().applications[serve_app.APP_NAME].deployments[serve_app.DEPLOYMENT_NAME]
        return deployment.replica_states.get("RUNNING", 0) == 2

    wait_until(running, "both replicas running again")  # the newcomer passed its health check: model loaded
    samples = metrics_of(app["url"], survivors)[newcomer]
    assert value(samples, "qclip_backend_info", backend="torch", precision="fp32", device="cpu") == 1
    response = upload(app["url"], media["good"][2])
    assert response.status_code == 200 and response.headers[HEADER] in survivors, response.text
    app["replicas"] = survivors


def test_shutdown_runs_each_replica_lifespan_and_leaves_nothing(app, cluster):
    alive = replica_actors()
    assert alive == app["replicas"] and len(alive) == 2
    serve.shutdown()
    assert replica_actors() == set()
    assert not answers(app["url"]), "the port still answers after serve.shutdown()"
    for replica in alive:
        record = json.loads((app["stopped"] / f"{replica}.json").read_text())
        assert record == {"stopping": True, "model_thread": False}, (replica, record)
