"""The service tests' fake engine and odd-input generators (no test in this module).

``FakeEngine`` stands in for ``QualityEngine`` in ``QualityService``: no model loads, yet every
request goes the real way — admission, ``serve/inputs.py``, the decode pool, the batcher's model
thread, the error handlers — and its ``sample`` opens files with the real ``open_video``. The
generators make odd JSON bodies, paths and uploads from a seed; ``check`` is the contract every
answer keeps (< 500, the error shape, no server path, nothing at ERROR in the log).
"""

import json
import logging
import os
import random
import types
from pathlib import Path

import numpy as np

from qclip_engine.engine import SampledVideo, VideoResult
from qclip_engine.serve.settings import ServeSettings
from qclip_engine.video.container import open_video


SEED = 20261201
URL = "/v1/score"
GOOD = b"fake-good-video"  # the fake engine scores a file with exactly these bytes
MAX_UPLOAD = 4096


class FakeEngine:
    """What ``QualityService`` uses of ``QualityEngine``, without a model."""

    num_frames, image_size, workers, batch = 1, (2, 2), 2, 2
    backend = types.SimpleNamespace(name="fake", device="cpu", precision="fp32", label="fake-fp32")
    calibration, sampler = None, "fake"

    def __init__(self, artifact, **kwargs):
        pass

    def sample_frames(self, frames, name):
        return SampledVideo(name, np.asarray(frames), np.zeros(1, int), np.zeros(1), None, {})

    def sample(self, source, cancel=None):
        if Path(source).read_bytes()[:len(GOOD) + 1] != GOOD:  # the real checks say why not
            open_video(source).close()
        return SampledVideo(str(source), np.zeros((1, 2, 2, 3), np.uint8), np.zeros(1, int), np.zeros(1), {}, {})

    def run_batch(self, videos):
        return [VideoResult(input=v.input, score=0.5, timing_ms=dict(v.timing_ms)) for v in videos]


def make_tree(tmp_path: Path) -> types.SimpleNamespace:
    """The allowed root (odd files and links), the upload dir and a dir outside, under ``tmp_path``."""
    base = Path(os.path.realpath(tmp_path))
    allowed, uploads, outside = base / "allowed", base / "uploads", base / "outside"
    for d in (allowed / "sub", uploads, outside):
        d.mkdir(parents=True)
    (allowed / "good.mp4").write_bytes(GOOD)
    (allowed / "junk.mp4").write_bytes(b"not a video at all" * 10)
    (allowed / "empty.mp4").write_bytes(b"")
    (allowed / "sub" / "b.mp4").write_bytes(b"\x00" * 64)
    (outside / "secret.mp4").write_bytes(GOOD)
    (allowed / "locked.mp4").write_bytes(b"x")
    (allowed / "locked.mp4").chmod(0)  # unreadable unless the tests run as root
    (allowed / "loop1").symlink_to(allowed / "loop2")
    (allowed / "loop2").symlink_to(allowed / "loop1")
    (allowed / "self").symlink_to(allowed / "self")
    (allowed / "link_out.mp4").symlink_to(outside / "secret.mp4")
    (allowed / "link_zero").symlink_to("/dev/zero")
    (allowed / "link_dir").symlink_to(allowed / "sub", target_is_directory=True)
    (allowed / "dangling").symlink_to(allowed / "nowhere.mp4")
    os.mkfifo(allowed / "pipe.mp4")
    (allowed / "ünï cödé 😀.mp4").write_bytes(GOOD)
    return types.SimpleNamespace(allowed=allowed, uploads=uploads, outside=outside, base=base)


def fake_settings(tree: types.SimpleNamespace, **overrides) -> ServeSettings:
    return ServeSettings(**{"artifact": None, "batch": 2, "allow_dirs": (tree.allowed,), "max_upload_bytes": MAX_UPLOAD,
                            "timeout_s": 20.0, "batch_wait_s": 0.001, "upload_dir": tree.uploads, "queue": 8}
                         | overrides)


def check(served, caplog, response, sent: str = "") -> None:
    """The contract for any client input; ``sent`` is what the client itself wrote (may name the root)."""
    assert response.status_code < 500, response.text[:300]
    text = response.text
    if response.status_code != 200:
        body = response.json()
        assert list(body) == ["error"] and set(body["error"]) == {"code", "message"}, text[:300]
        assert all(isinstance(body["error"][k], str) and body["error"][k] for k in ("code", "message"))
        assert len(text) < 2000, text[:300]  # huge client strings are quoted cut short
    for server_path in (served.allowed, served.uploads, served.outside):
        if str(server_path) not in sent:
            assert str(server_path) not in text, text[:300]
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]


def random_json(rng: random.Random, depth: int = 0):
    kind = rng.randrange(8 if depth < 4 else 5)
    if kind == 0:
        return rng.choice([None, True, False, 0, -1, 2**70, 1e308, -0.0, float("nan"), float("inf")])
    if kind == 1:
        return rng.uniform(-1e9, 1e9)
    if kind in (2, 3, 4):
        return "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0x2FFF), 0, 0xD800, 0x1F600]))
                       for _ in range(rng.randrange(0, 20)))
    if kind == 5:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["path", "file", "", "PATH", "path "]
    return {rng.choice(keys): random_json(rng, depth + 1) for _ in range(rng.randrange(4))}


def json_bodies(rng: random.Random) -> list[bytes]:
    bodies = [
        b"[" * 30000, b"{" * 30000, b'{"a":' * 8000 + b"1" + b"}" * 8000,
        b'{"path": "a.mp4", "x": ' + b"[" * 20000 + b"]" * 20000 + b"}",
        b"[" * 990 + b"]" * 990,  # deep, yet parses: a list is 400 bad_request
        json.dumps({"path": "a" * 60000}).encode(),
        json.dumps({"path": "a" * 70000}).encode(),  # past the 64 KiB body limit: 413
        json.dumps({"path": "../" * 20000}).encode(),
        b'{"path": NaN}', b'{"path": Infinity}', b'{"path": -Infinity}', b"NaN", b"Infinity",
        b'{"path": 1, "path": "good.mp4"}', b'{"path": "good.mp4", "path": 1}', b'{"path": "a", "path": "b"}',
        b"[]", b"{}", b"null", b"true", b"0", b"-1", b"1e999", b'"good.mp4"', b'["good.mp4"]',
        b'{"path": ' + b"9" * 5000 + b"}", b'{"path": 1' + b"0" * 4400 + b"}",
        b"", b" ", b"\n\t", b"\x00", b"\xff\xfe\xfd", b"\xef\xbb\xbf" + b'{"path": "good.mp4"}',
        json.dumps({"path": "good.mp4"}).encode("utf-16"), json.dumps({"path": "good.mp4"}).encode("utf-32"),
        b'{"path": "\xff\xfe.mp4"}', b'{"path": "\xc3\x28"}', b'{"path": "\xed\xa0\x80"}',
        b'{"path": "\\ud800"}', b'{"path": "\\udc80.mp4"}', b'{"path": "\\u0000"}', b'{"path": "\\uZZZZ"}',
        b'{"path": "good.mp4"', b'{"path": "good.mp4"}}', b'{"path": "good.mp4",}', b"{'path': 'good.mp4'}",
        b'{"path": true}', b'{"path": null}', b'{"path": {}}', b'{"path": []}', b'{"path": ""}', b'{"path": 0}',
        b'{"path": "good.mp4"} trailing', b'{"path": "good.mp4"}\x00', b'{"path": "good.mp4"}' + b" " * 60000,
        b'{"path": "' + b"\\\\" * 30000 + b'"}', b'{"path": "' + b"\\u00e9" * 10000 + b'"}',
    ]
    valid = json.dumps({"path": "good.mp4"}).encode()
    for _ in range(60):  # byte-level mutations of a valid body
        body = bytearray(valid)
        for _ in range(rng.randrange(1, 5)):
            op, at = rng.randrange(3), rng.randrange(len(body) + 1)
            if op == 0 and body:
                del body[min(at, len(body) - 1)]
            elif op == 1:
                body[at:at] = bytes([rng.randrange(256)])
            elif body:
                body[min(at, len(body) - 1)] = rng.randrange(256)
        bodies.append(bytes(body))
    for _ in range(40):  # random JSON values, some of them objects with a "path"
        bodies.append(json.dumps(random_json(rng)).encode())
    for _ in range(10):
        bodies.append(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))))
    return bodies


def odd_paths(served, rng: random.Random) -> list[str]:
    allowed, outside = str(served.allowed), str(served.outside)
    paths = [
        "a" * 5000, "a" * 256, "a" * 255, "sub/" + "b" * 300 + ".mp4", "/" + "x" * 4097, "a/" * 3000,
        "../" * 50 + "etc/passwd", "../outside/secret.mp4", "sub/../../outside/secret.mp4", "..", "../", "...",
        "sub/../good.mp4", "./good.mp4", ".//good.mp4", "good.mp4/", "good.mp4/.", "good.mp4/..", "junk.mp4/x",
        "good.mp4\x00.txt", "\x00", "a\x00" * 100, "loop1", "loop1/x.mp4", "self", "self/self", "dangling",
        "link_out.mp4", "link_zero", "link_dir", "link_dir/b.mp4", "link_dir/../good.mp4",
        "/etc/passwd", "/dev/zero", "/dev/null", "/dev/urandom", "/proc/self/environ", "/proc/self/fd/0",
        "/", "//", "///etc/passwd", outside + "/secret.mp4", allowed + "/../outside/secret.mp4",
        allowed + "2/x.mp4", allowed + "/good.mp4", allowed, allowed + "/", allowed + "/sub", allowed + "/pipe.mp4",
        ".", "./", "sub", "sub/", "sub//", "pipe.mp4", "empty.mp4", "junk.mp4", "sub/b.mp4", "locked.mp4",
        "missing.mp4", "missing/dir/x.mp4", "good.mp4", "ünï cödé 😀.mp4", "ünï cödé 😀.mp4/", "\u202egood.mp4",
        "%2e%2e/outside/secret.mp4", "%2e%2e%2foutside%2fsecret.mp4", "..%2f..%2fetc%2fpasswd", "%00",
        "..\\outside\\secret.mp4", "C:\\Windows\\win.ini", "\\\\server\\share\\x.mp4", "~", "~root/.bashrc",
        "$HOME/x.mp4", "`id`", "$(id)", "good.mp4;rm -rf /", "good.mp4\nx", "\r\n", " ", " good.mp4",
        "\ud800", "good\udc80.mp4", "\U0010ffff" * 40, "é" * 200, "😀" * 100, "\t", "*", "?", "*.mp4",
        "file:///etc/passwd", "http://127.0.0.1/x.mp4", "-", "--help",
    ]
    alphabet = "./\\%~\x00é😀ab \n" + "\udc80"
    for _ in range(30):
        paths.append("".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 40))))
    return paths


def part(name: str, data: bytes, filename: bytes | None = None, boundary: bytes = b"fz") -> bytes:
    disposition = b'form-data; name="' + name.encode() + b'"' + (b'; filename="' + filename + b'"' if filename is not None else b"")
    return b"--" + boundary + b"\r\nContent-Disposition: " + disposition + b"\r\n\r\n" + data + b"\r\n"


def odd_uploads(rng: random.Random) -> list[tuple[dict, bytes]]:
    mp = {"content-type": "multipart/form-data; boundary=fz"}
    end = b"--fz--\r\n"
    good = part("file", GOOD, b"good.mp4") + end
    cases = [
        (mp, good), (mp, part("file", b"junk" * 10, b"x.mp4") + end), (mp, part("file", b"", b"e.mp4") + end),
        (mp, part("file", os.urandom(MAX_UPLOAD + 1), b"big.mp4") + end),  # 413
        (mp, part("note", b"n" * 70000) + part("file", GOOD, b"a.mp4") + end),  # 413, outside the file part
        (mp, part("video", GOOD, b"a.mp4") + end), (mp, part("file", GOOD, b"a.mp4") + part("file", GOOD, b"b.mp4") + end),
        (mp, good[:30]), (mp, good[:-8]), (mp, b""), (mp, b"--fz--\r\n"), (mp, b"garbage"), (mp, b"\r\n" * 100),
        (mp, b"--fz\r\n\r\n" + GOOD + b"\r\n" + end), (mp, b"--fz\r\nContent-Disposition: form-data\r\n\r\nx\r\n" + end),
        (mp, b"--fz\r\nbroken header\r\n\r\nx\r\n" + end), (mp, b"--fz\r\n" + b"X-H: " + b"v" * 20000 + b"\r\n\r\n" + end),
        (mp, b"--fzX\r\n" + GOOD + end), (mp, b"--fz" + b"\x00" * 100),
        ({"content-type": "multipart/form-data"}, good), ({"content-type": "multipart/form-data; boundary="}, good),
        ({"content-type": "multipart/form-data; boundary=" + "b" * 300}, good),
        ({"content-type": "multipart/form-data; boundary=\"fz\""}, good),
        ({"content-type": "multipart/form-data; boundary=other"}, good),
        ({"content-type": "multipart/form-data; boundary=fz; boundary=zz"}, good),
        ({"content-type": "multipart/form-data; boundary=f\u00e9z"}, good),
        ({"content-type": "MULTIPART/FORM-DATA; boundary=fz"}, good),
        (mp | {"content-length": "\u00b2\u00b3"}, good), (mp | {"content-length": "99999999999999999999"}, good),
        ({"content-type": "text/plain"}, b"good.mp4"), ({"content-type": ""}, b"{}"), ({}, b'{"path": "good.mp4"}'),
        ({"content-type": "application/json; charset=latin-1"}, b'{"path": "good.mp4"}'),
        ({"content-type": "application/x-www-form-urlencoded"}, b"path=good.mp4"),
        ({"content-type": "application/json\x7f"}, b"{}"), ({"content-type": ";;;"}, b"{}"),
    ]
    for name in (b"../../etc/passwd", b"..", b".", b"", b"a\x00b.mp4", b"\xff\xfe.mp4", b"\xed\xa0\x80.mp4",
                 b"x" * 5000 + b".mp4", b"C:\\x\\y.mp4", "ünï 😀.MP4".encode(), b"a.mp4\r\nX-Evil: 1",
                 b"%2e%2e%2fx.mp4", b"good.mp4/", b"a.verylongsuffix", b'a".mp4', b"\\\\srv\\x.mp4"):
        cases.append((mp, part("file", GOOD if rng.random() < 0.5 else b"junk", name) + end))
    for _ in range(20):  # byte-level mutations of a valid upload
        body = bytearray(good)
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(len(body))
            body[at] = rng.randrange(256)
        cases.append((mp, bytes(body)))
    return cases
