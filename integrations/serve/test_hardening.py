"""The HTTP edge as an attacker meets it, against real servers on 127.0.0.1: malformed bodies are 400s in OpenAI's
shape (never 500), only application/json is read (415), the API docs and CORS are off unless asked for, the served
name is never a local path, slow or half-sent requests are disconnected and connections are capped."""

from __future__ import annotations

import contextlib
import socket
import time

import pytest
from serve_helpers import API_KEY, MODEL_NAME, assert_error

from moee_plugins.serve.http import HttpLimits, served_name

GOOD = {"model": MODEL_NAME, "input": ["still serving"], "encoding_format": "float"}
JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b'{"input": "a\\ud800b"}', "'input[0]' holds a lone surrogate ('\\ud800') at character 1"),
        (b'{"input": ["ok", "\\udfff"]}', "'input[1]' holds a lone surrogate"),
        (b'{"input": "' + "é".encode("latin-1") + b'"}', "not valid JSON"),  # not UTF-8
        (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
        (b'{"input": "a", "x": ' + b"[" * 200_000 + b"]" * 200_000 + b"}", "nested too deeply"),
        (b'{"input": "a", "dimensions": ' + b"9" * 5000 + b"}", "not valid JSON"),
        (b'{"input": "a", "dimensions": ' + b"9" * 4000 + b"}", "dimensions=a number of more than 60 digits is not available"),
        (b'{"input": "a", "dimensions": NaN}', "NaN is not a JSON number"),
        (b'{"input": "a", "dimensions": 1e999}', "'dimensions' must be a positive integer, got inf"),
        (b'{"input": "a", "encoding_format": ' + b"[" * 500 + b"]" * 500 + b"}", "'encoding_format' must be one of"),
        (b'{"input": "a", "model": "\\ud800"}', "model '\\ud800' is not served here"),
        (b'{"input": [[1, 2], "a", 3]}', "'input[2]' must be a string, got a number"),
    ],
)
def test_malformed_bodies_are_400_never_500(server, raw, fragment):
    with server.client() as client:
        response = client.post("/v1/embeddings", content=raw, headers=JSON)
        assert response.status_code in (400, 404), response.text
        assert_error(response, response.status_code, fragment)
        assert client.post("/v1/embeddings", json=GOOD).status_code == 200


@pytest.mark.parametrize("route", ["/v1/embeddings", "/similarity", "/v1/rerank"])
@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/jsonx"])
def test_only_json_bodies_are_read(server, route, content_type):
    """A page on any web site can post text/plain or a form to a keyless server on localhost without a CORS
    preflight: such bodies are refused before anything is computed."""
    body = b'{"input": "a", "queries": "a", "documents": ["b"], "query": "a"}'
    with server.client() as client:
        headers = {} if content_type is None else {"Content-Type": content_type}
        assert_error(client.post(route, content=body, headers=headers), 415, "Content-Type: application/json",
               "unsupported_media_type")
        ok = client.post(route, content=body, headers={"Content-Type": "Application/JSON; charset=utf-8"})
        assert ok.status_code == 200, ok.text


def test_docs_are_off_by_default_and_behind_the_key_when_on(server, serve_factory, tiny_embedder):
    with server.client() as client:
        for route in ("/docs", "/redoc", "/openapi.json"):
            assert_error(client.get(route), 404, "Not Found")
    with_docs = serve_factory(tiny_embedder, docs=True)
    with with_docs.client(key=None) as anonymous, with_docs.client() as client:
        for route in ("/docs", "/redoc", "/openapi.json"):
            assert_error(anonymous.get(route), 401, "invalid or missing API key")
            assert client.get(route).status_code == 200
        assert "/v1/rerank" in client.get("/openapi.json").json()["paths"]
    keyless = serve_factory(tiny_embedder, docs=True, api_key=None)
    with keyless.client(key=None) as anonymous:
        assert "swagger" in anonymous.get("/docs").text.lower()


def test_cors_is_off_unless_an_origin_is_given(server, serve_factory, tiny_embedder):
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    with server.client() as client:
        answer = client.post("/v1/embeddings", json=GOOD, headers={"Origin": "https://evil.example"})
        assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers
        assert "access-control-allow-origin" not in client.options("/v1/embeddings", headers=preflight).headers
    running = serve_factory(tiny_embedder, cors_origins=("https://app.example",))
    with running.client() as client:
        allowed = client.options("/v1/embeddings", headers={**preflight, "Origin": "https://app.example"})
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        refused = client.options("/v1/embeddings", headers=preflight)
        assert refused.headers.get("access-control-allow-origin") != "https://evil.example"


def test_served_name_is_never_a_local_path(serve_factory, tiny_embedder, tiny_model_dir):
    from moee_plugins.serve import create_app

    app = create_app(tiny_embedder)  # no settings: the name comes from the embedder's model reference
    assert app.state.settings.model_name == tiny_model_dir.name
    app.state.batcher.close()
    assert served_name(str(tiny_model_dir)) == tiny_model_dir.name
    assert served_name(str(tiny_model_dir) + "/") == tiny_model_dir.name
    assert served_name("moee:olmoe") == "olmoe"
    assert served_name("allenai/OLMoE-1B-7B-0924") == "allenai/OLMoE-1B-7B-0924"
    running = serve_factory(tiny_embedder, model_name=served_name(str(tiny_model_dir)))
    with running.client() as client:
        listed = client.get("/v1/models").json()["data"][0]["id"]
        refused = client.post("/v1/embeddings", json={"model": "other", "input": "a"}).text
    assert listed == tiny_model_dir.name
    assert str(tiny_model_dir.parent) not in refused and tiny_model_dir.name in refused


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed the connection (EOF or reset, after an error answer or none) before the
    socket's own timeout."""
    try:
        while sock.recv(65536):  # h11 answers 400 to over-long headers before closing; httptools just closes
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _connect(url: str, timeout: float) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


def test_slow_headers_and_half_sent_bodies_are_disconnected(serve_factory, tiny_embedder):
    """20 slow-loris connections and 20 half-sent 1 MB bodies are all closed by the read deadline (2 s here; the
    sockets wait up to 30 s), and the server keeps answering."""
    running = serve_factory(tiny_embedder, limits=HttpLimits(timeout_read_s=2.0))
    slow, half = [], []
    try:
        for _ in range(20):
            sock = _connect(running.url, 30)
            sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # headers never end
            slow.append(sock)
        for _ in range(20):
            sock = _connect(running.url, 30)
            sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Authorization: Bearer " + API_KEY.encode() + b"\r\nContent-Length: 1000000\r\n\r\n"
                         + b'{"input": "' + b"w" * 100_000)  # a tenth of the body, then nothing
            half.append(sock)
        assert all(_closed_by_server(sock) for sock in slow + half)
    finally:
        for sock in slow + half:
            sock.close()
    with running.client() as client:
        assert client.post("/v1/embeddings", json=GOOD).status_code == 200


def _half_sent(url: str, declared: int, sent: int) -> socket.socket:
    sock = _connect(url, 20)
    sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Authorization: Bearer " + API_KEY.encode() + b"\r\nContent-Length: " + str(declared).encode()
                 + b"\r\n\r\n" + b'{"input": "' + b"w" * (sent - 11))
    return sock


def test_bodies_read_at_once_are_bounded_in_bytes(serve_factory, tiny_embedder):
    """Two half-sent 1 MB bodies hold 1.8 MB of a 2 MB budget: a third large body is told to retry (503) instead
    of adding to the memory held, a small request still passes, and once they go the large one is read."""
    mib = 1024 * 1024
    running = serve_factory(tiny_embedder, max_request_bytes=mib, max_buffered_bytes=2 * mib,
                            limits=HttpLimits(timeout_read_s=120))
    large = {"input": "short", "user": "u" * (600 * 1024)}  # a large body, little work
    holders = [_half_sent(running.url, 1_000_000, 900_000) for _ in range(2)]
    try:
        with running.client() as client:
            for _ in range(400):  # until the server has read what the holders sent (bounded polling)
                refused = client.post("/v1/embeddings", json=large)
                if refused.status_code == 503:
                    break
                time.sleep(0.05)
            assert_error(refused, 503, "retry shortly", "busy_reading")
            assert refused.headers["retry-after"] == "1"
            assert client.post("/v1/embeddings", json=GOOD).status_code == 200
    finally:
        for sock in holders:
            sock.close()
    with running.client() as client:
        for _ in range(400):  # until the server has seen the holders go
            if client.post("/v1/embeddings", json=large).status_code == 200:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the large request was never read after the held bodies went away")


def test_endless_headers_are_cut_off(serve_factory, tiny_embedder):
    """Headers past max_header_bytes end the connection (httptools would buffer them without a limit)."""
    running = serve_factory(tiny_embedder, limits=HttpLimits(max_header_bytes=16 * 1024))
    for _ in range(3):
        with _connect(running.url, 20) as sock:
            sent = 0
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
                while sent < 64 * 1024 * 1024:  # stops when the server closes (long before this bound)
                    sock.sendall(b"a" * 65536)
                    sent += 65536
            assert sent < 64 * 1024 * 1024
            assert _closed_by_server(sock)
    with _connect(running.url, 20) as sock:  # whole headers in one write, too long: closed, not answered 200
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 32768 + b"\r\n\r\n")
        try:
            answer = sock.recv(65536)
        except ConnectionResetError:
            answer = b""
        assert not answer.startswith(b"HTTP/1.1 200")
    with running.client() as client:
        assert client.post("/v1/embeddings", json=GOOD, headers={"X-Fine": "b" * 8000}).status_code == 200


def test_connections_beyond_the_cap_are_closed(serve_factory, tiny_embedder):
    running = serve_factory(tiny_embedder, limits=HttpLimits(max_connections=3, timeout_keep_alive_s=60))
    held = []
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    try:
        for _ in range(3):  # answered, so the server holds them as open keep-alive connections
            sock = _connect(running.url, 20)
            sock.sendall(request)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            held.append(sock)
        extra = _connect(running.url, 20)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            extra.sendall(request)
        assert _closed_by_server(extra)
        extra.close()
    finally:
        for sock in held:
            sock.close()
    # once the server has seen the others go, a new connection is served again (bounded polling, no timing)
    for _ in range(200):
        sock = _connect(running.url, 20)
        try:
            sock.sendall(request)
            if sock.recv(65536).startswith(b"HTTP/1.1 200"):
                break
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            sock.close()
        time.sleep(0.05)
    else:
        pytest.fail("the server never served a new connection after the held ones closed")
