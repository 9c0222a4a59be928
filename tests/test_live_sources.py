"""The loopback live sources the monitor tests stand on: paced like the media, faults on demand,
decodable by PyAV as a live URL; the dead ones refuse or stay silent."""

import socket
import time

import av
import numpy as np
import pytest
from live_sources import LiveTSServer, SilentServer, UdpSender, encode_ts, refused_url, ts_duration

SIZE = (320, 180)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return encode_ts(tmp_path_factory.mktemp("live") / "clip.ts", 3, size=SIZE)


def _get(url: str, timeout: float = 2.0) -> tuple[socket.socket, bytes]:
    """A raw HTTP GET: the socket (streaming on) and the response head."""
    host, rest = url.split("//", 1)[1].split("/", 1)
    ip, port = host.split(":")
    sock = socket.create_connection((ip, int(port)), timeout=timeout)
    sock.sendall(f"GET /{rest} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        got = sock.recv(1)
        if not got:
            break
        head += got
    return sock, head


def _read_for(sock: socket.socket, seconds: float) -> tuple[bytes, bool]:
    """Bytes read for ``seconds``; and whether the connection is still open."""
    data, deadline = b"", time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            got = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return data, False
        if not got:
            return data, False
        data += got
    return data, True


def test_encode_ts_is_one_second_gops_of_h264_and_takes_known_frames(clip, tmp_path):
    assert ts_duration(clip.read_bytes()) == pytest.approx(3.0)
    with av.open(str(clip)) as c:
        stream = c.streams.video[0]
        assert (stream.codec_context.name, stream.width, stream.height) == ("h264", *SIZE)
        assert not c.streams.audio
        keys = [p.is_keyframe for p in c.demux(stream) if p.size]
    assert len(keys) == 75 and [i for i, k in enumerate(keys) if k] == [0, 25, 50]
    frames = np.full((20, 64, 96, 3), 200, np.uint8)
    frames[10:] = 0  # a black span
    with av.open(str(encode_ts(tmp_path / "known.ts", frames=frames, fps=10))) as c:
        luma = [f.to_ndarray(format="gray").mean() for f in c.decode(video=0)]
    assert len(luma) == 20 and min(luma[:10]) > 150 and max(luma[10:]) < 20


def test_the_server_streams_ts_at_the_payloads_rate_to_several_clients(clip):
    with LiveTSServer(clip) as server:
        assert server.rate == pytest.approx(clip.stat().st_size / 3.0)
        socks = [_get(server.url_for(f"cam{i}")) for i in range(3)]
        try:
            assert all(head.startswith(b"HTTP/1.1 200") for _, head in socks)
            start = time.monotonic()
            got = [_read_for(socks[0][0], 2.0)[0]]
            elapsed = time.monotonic() - start
            got += [_read_for(sock, 0.3)[0] for sock, _ in socks[1:]]  # the others' kernel buffers
        finally:
            for sock, _ in socks:
                sock.close()
        assert server.clients == 3
        assert len(got[0]) == pytest.approx(server.rate * elapsed, rel=0.15)
        for data in got:  # whole TS packets from the live position on
            assert len(data) > 0 and data[0:len(data):188].count(0x47) == len(data[0:len(data):188])
        sock, head = _get(f"http://127.0.0.1:{server.port}/index.html")
        sock.close()
        assert head.startswith(b"HTTP/1.1 404")


def test_stall_resume_drop_and_come_back(clip):
    with LiveTSServer(clip) as server:
        sock, _ = _get(server.url)
        assert len(_read_for(sock, 0.3)[0]) > 0
        server.stall()
        _read_for(sock, 0.1)  # what was in flight
        quiet, open_ = _read_for(sock, 0.5)
        assert quiet == b"" and open_  # stalled: nothing comes, the connection stays
        server.resume()
        assert len(_read_for(sock, 0.3)[0]) > 0
        server.drop()
        _, open_ = _read_for(sock, 0.5)
        assert not open_
        sock.close()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", server.port), timeout=2)
        server.come_back()
        sock, head = _get(server.url)
        assert head.startswith(b"HTTP/1.1 200") and len(_read_for(sock, 0.3)[0]) > 0
        sock.close()
        assert server.clients == 2


def test_pyav_decodes_the_live_stream(clip):
    with LiveTSServer(clip) as server:
        start = time.monotonic()
        with av.open(server.url, timeout=(5, 5)) as c:
            frames = []
            for frame in c.decode(video=0):
                frames.append(frame)
                if len(frames) == 30:
                    break
        took = time.monotonic() - start
    assert frames[0].key_frame and (frames[0].width, frames[0].height) == SIZE
    assert took < 4.0  # a joiner's first keyframe is at most a second away, then real time


def test_a_garbage_source_sends_random_bytes_paced():
    with LiveTSServer(garbage=True, rate=50_000) as server:
        sock, head = _get(server.url)
        data, _ = _read_for(sock, 1.0)
        sock.close()
    assert head.startswith(b"HTTP/1.1 200")
    assert 35_000 < len(data) < 65_000
    assert data[0:len(data):188].count(0x47) < len(data) // 188 // 4  # not MPEG-TS


def test_dead_sources_refuse_or_stay_silent():
    url = refused_url()
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    with pytest.raises(av.error.ConnectionRefusedError):
        av.open(url, timeout=(2, 2))
    with SilentServer() as silent:
        start = time.monotonic()
        with pytest.raises(av.error.FFmpegError):
            av.open(silent.url, timeout=(0.5, 0.5))
        assert time.monotonic() - start < 3.0
        assert silent.clients == 1


def test_udp_sender_is_ffmpeg_resending_in_real_time(clip):
    sender = UdpSender(clip)
    try:
        with av.open(sender.url, timeout=(5, 5)) as c:
            times = []
            for frame in c.decode(video=0):
                times.append(frame.time)
                if len(times) == 25:
                    break
        assert sender.alive()
    finally:
        sender.close()
    assert not sender.alive()
    assert np.allclose(np.diff(times), 0.04)
