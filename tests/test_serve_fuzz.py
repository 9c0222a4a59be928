"""Fuzz-style: odd client input against the real app, in-process, never gets a 500.

``create_app`` runs under Starlette's ``TestClient`` (lifespan included) with a fake engine in
place of ``QualityEngine``: no model loads, yet every request goes the real way — admission,
``serve/inputs.py``, the decode pool, the batcher's model thread, the error handlers. The fake
engine's ``sample`` opens files with the real ``open_video`` (``qclip_engine/video/container.py``),
so a path the service lets through meets the decoder's own checks. Inputs come from a fixed seed.

Every answer must be < 500; any answer but a score is ``{"error": {"code", "message"}}``; no
answer names the allowed root or the upload directory (unless the client sent that string
itself); no ERROR record or traceback reaches the log; no upload temp file is left behind.
"""

import json
import logging
import random
import time
import types

import pytest
from serve_fakes import SEED, URL, FakeEngine, check, fake_settings, json_bodies, make_tree, odd_paths, odd_uploads
from starlette.testclient import TestClient

from qclip_engine.serve import service as service_module
from qclip_engine.serve.app import create_app


@pytest.fixture
def served(tmp_path, monkeypatch, caplog):
    """(client, allowed root, upload dir, outside dir) of a ready app on a fake engine."""
    tree = make_tree(tmp_path)
    monkeypatch.setattr(service_module, "QualityEngine", FakeEngine)
    caplog.set_level(logging.INFO)
    with TestClient(create_app(fake_settings(tree)), raise_server_exceptions=False) as client:
        deadline = time.monotonic() + 20
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the fake engine never got ready"
            time.sleep(0.01)
        yield types.SimpleNamespace(client=client, **vars(tree))
    (tree.allowed / "locked.mp4").chmod(0o644)


def test_odd_json_bodies_never_get_a_500(served, caplog):
    bodies = json_bodies(random.Random(SEED))
    assert len(bodies) >= 100
    statuses = {}
    for body in bodies:
        response = served.client.post(URL, content=body, headers={"content-type": "application/json"})
        check(served, caplog, response, body.decode("utf-8", "replace"))
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
    assert statuses.get(400, 0) > 50 and statuses.get(413) and statuses.get(200)  # it did reach all of them


def test_odd_paths_never_get_a_500(served, caplog):
    paths = odd_paths(served, random.Random(SEED + 1))
    assert len(paths) >= 50
    codes = set()
    for raw in paths:
        response = served.client.post(URL, content=json.dumps({"path": raw}).encode(),
                                      headers={"content-type": "application/json"})
        check(served, caplog, response, raw)
        codes.add((response.status_code, response.json().get("error", {}).get("code")))
    assert {(400, "invalid_path"), (403, "path_not_allowed"), (422, "not_found"), (422, "not_a_video"),
            (422, "empty_file"), (200, None)} <= codes, codes


def test_odd_uploads_and_media_types_never_get_a_500(served, caplog):
    cases = odd_uploads(random.Random(SEED + 2))
    for headers, body in cases:
        response = served.client.post(URL, content=body, headers={k: v.encode("latin-1") for k, v in headers.items()})
        check(served, caplog, response, body.decode("utf-8", "replace"))
    assert list(served.uploads.iterdir()) == []  # every temp file deleted, whatever the answer
