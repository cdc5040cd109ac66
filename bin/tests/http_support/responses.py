"""Strict HTTP clients parse every kind of response of gaidaros's http handler.

Usage: /usr/bin/python3 responses.py {http.client|h11} HOST PORT SIZE

The server serves a root holding `data.bin` of SIZE bytes, and `/hello`.
Well-formed requests go one after another on ONE keep-alive connection, so
a response whose framing is wrong (a Content-Length that does not match
its body, a body after a HEAD or a 304) breaks the responses after it.
Malformed requests are written as raw bytes, each on its own connection;
their answer must say `Connection: close` and be followed by the server
closing. For h11, the connection is first told that a plausible request
of the same method was sent (h11 parses a response only in that state),
then the raw bytes go out instead.

Prints one line per case; exits 1 if any case failed (an
h11.RemoteProtocolError is a failure).
"""

import http.client
import socket
import sys

CLIENT, HOST, PORT, SIZE = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
TIMEOUT = 10
HELLO = b"Hello, World!"


def header(headers, name):
    """The value of header `name` in a list of (name, value) str pairs."""
    for n, v in headers:
        if n.lower() == name.lower():
            return v
    return None


def check_hello(h, body):
    return None if body == HELLO else "body %r" % body


def check_whole(h, body):
    if len(body) != SIZE:
        return "body of %d bytes, want %d" % (len(body), SIZE)
    return None


def check_head(h, body):
    if body:
        return "a body after HEAD: %r" % body[:80]
    if header(h, "Content-Length") != str(SIZE):
        return "Content-Length %r, want %d" % (header(h, "Content-Length"), SIZE)
    return None


def check_range(h, body):
    if len(body) != 100:
        return "body of %d bytes, want 100" % len(body)
    if header(h, "Content-Range") != "bytes 0-99/%d" % SIZE:
        return "Content-Range %r" % header(h, "Content-Range")
    return None


def check_multi(h, body):
    ct = header(h, "Content-Type") or ""
    prefix = "multipart/byteranges; boundary="
    if not ct.startswith(prefix):
        return "Content-Type %r" % ct
    boundary = ct[len(prefix):].encode()
    if body.count(b"\r\n--" + boundary + b"\r\n") != 2:
        return "want 2 parts in %r" % body[:300]
    if not body.endswith(b"\r\n--" + boundary + b"--\r\n"):
        return "no closing delimiter: %r" % body[-80:]
    for r in (b"bytes 0-9/%d" % SIZE, b"bytes 100-109/%d" % SIZE):
        if b"Content-Range: " + r + b"\r\n" not in body:
            return "no part with Content-Range %r" % r
    return None


def check_empty(h, body):
    return "body %r" % body[:80] if body else None


def check_allow(h, body):
    allow = header(h, "Allow")
    return None if allow == "GET, HEAD" else "Allow %r" % allow


def check_416(h, body):
    cr = header(h, "Content-Range")
    return None if cr == "bytes */%d" % SIZE else "Content-Range %r" % cr


def well_formed(state):
    """(name, method, target, extra headers, status, check)."""
    return [
        ("hello", "GET", "/hello", [], 200, check_hello),
        ("file", "GET", "/data.bin", [], 200, check_whole),
        ("HEAD", "HEAD", "/data.bin", [], 200, check_head),
        ("range", "GET", "/data.bin", [("Range", "bytes=0-99")], 206, check_range),
        ("multi-range", "GET", "/data.bin", [("Range", "bytes=0-9,100-109")], 206, check_multi),
        ("304", "GET", "/data.bin", [("If-None-Match", state.get("etag", '"none"'))], 304, check_empty),
        ("404", "GET", "/missing.bin", [], 404, None),
        ("405", "DELETE", "/data.bin", [], 405, check_allow),
        ("416", "GET", "/data.bin", [("Range", "bytes=%d-" % SIZE)], 416, check_416),
        ("hello again", "GET", "/hello", [], 200, check_hello),
    ]


BIG_LINE = b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
BIG_HEADER = b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n"
MANY_HEADERS = (
    b"GET /hello HTTP/1.1\r\nHost: x\r\n"
    + b"".join(b"X-%d: y\r\n" % i for i in range(100))
    + b"\r\n"
)

# (name, method h11 is told it sent, its extra headers, raw bytes, status)
RAW = [
    ("400 bare LF", "GET", [], b"GET /hello HTTP/1.1\nHost: x\n\n", 400),
    ("400 obs-fold", "GET", [], b"GET /hello HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", 400),
    ("400 no Host", "GET", [], b"GET /hello HTTP/1.1\r\n\r\n", 400),
    (
        "400 CL and TE",
        "POST",
        [("Content-Length", "5")],
        b"POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "413",
        "POST",
        [("Content-Length", "1048577")],
        b"POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 1048577\r\n\r\n",
        413,
    ),
    ("414", "GET", [], BIG_LINE, 414),
    ("431 long header", "GET", [], BIG_HEADER, 431),
    ("431 101 headers", "GET", [], MANY_HEADERS, 431),
    ("505", "GET", [], b"GET /hello HTTP/2.0\r\nHost: x\r\n\r\n", 505),
]


def raw_socket():
    s = socket.create_connection((HOST, PORT), timeout=TIMEOUT)
    s.settimeout(TIMEOUT)
    return s


def expect_eof(sock):
    rest = sock.recv(65536)
    if rest:
        return "bytes after the response: %r" % rest[:80]
    return None


# --- http.client -----------------------------------------------------------


def http_client_well_formed(report):
    state = {}
    conn = http.client.HTTPConnection(HOST, PORT, timeout=TIMEOUT)
    for name, method, target, extra, status, check in well_formed(state):
        # The 304 case needs the ETag the file case received.
        if name == "304":
            extra = [("If-None-Match", state.get("etag", "\"missing\""))]
        try:
            conn.request(method, target, headers=dict(extra))
            resp = conn.getresponse()
            body = resp.read()
            headers = resp.getheaders()
        except Exception as e:  # noqa: BLE001 - any exception is a failure
            report(name, "%s: %s" % (type(e).__name__, e))
            # The connection is unusable now; carry on with a fresh one.
            conn.close()
            conn = http.client.HTTPConnection(HOST, PORT, timeout=TIMEOUT)
            continue
        if name == "file":
            state["etag"] = resp.getheader("ETag") or '"missing"'
        if resp.status != status:
            report(name, "status %d, want %d" % (resp.status, status))
        elif check is not None:
            report(name, check(headers, body))
        else:
            report(name, None)
    conn.close()


def http_client_raw(report):
    for name, method, _extra, raw, status in RAW:
        try:
            sock = raw_socket()
            sock.sendall(raw)
            resp = http.client.HTTPResponse(sock, method=method)
            resp.begin()
            resp.read()
            why = None
            if resp.status != status:
                why = "status %d, want %d" % (resp.status, status)
            elif (resp.getheader("Connection") or "").lower() != "close":
                why = "Connection %r, want close" % resp.getheader("Connection")
            else:
                why = expect_eof(sock)
            sock.close()
            report(name, why)
        except Exception as e:  # noqa: BLE001
            report(name, "%s: %s" % (type(e).__name__, e))


# --- h11 -------------------------------------------------------------------


def h11_events(h11, conn, sock):
    """Events of one response: (Response, body bytes)."""
    resp = None
    body = b""
    while True:
        ev = conn.next_event()
        if ev is h11.NEED_DATA:
            conn.receive_data(sock.recv(65536))
        elif isinstance(ev, h11.InformationalResponse):
            raise AssertionError("unexpected %r" % ev)
        elif isinstance(ev, h11.Response):
            resp = ev
        elif isinstance(ev, h11.Data):
            body += ev.data
        elif isinstance(ev, h11.EndOfMessage):
            return resp, body
        elif isinstance(ev, h11.ConnectionClosed):
            raise AssertionError("connection closed in the middle of a response")
        else:
            raise AssertionError("unexpected event %r" % ev)


def str_headers(resp):
    return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in resp.headers]


def h11_well_formed(h11, report):
    state = {}
    sock = raw_socket()
    conn = h11.Connection(h11.CLIENT)
    for name, method, target, extra, status, check in well_formed(state):
        if name == "304":
            extra = [("If-None-Match", state.get("etag", "\"missing\""))]
        try:
            headers = [("Host", "%s:%d" % (HOST, PORT))] + extra
            sock.sendall(conn.send(h11.Request(method=method, target=target, headers=headers)))
            sock.sendall(conn.send(h11.EndOfMessage()))
            resp, body = h11_events(h11, conn, sock)
            conn.start_next_cycle()
        except Exception as e:  # noqa: BLE001
            report(name, "%s: %s" % (type(e).__name__, e))
            sock.close()
            sock = raw_socket()
            conn = h11.Connection(h11.CLIENT)
            continue
        h = str_headers(resp)
        if name == "file":
            state["etag"] = header(h, "ETag") or '"missing"'
        if resp.status_code != status:
            report(name, "status %d, want %d" % (resp.status_code, status))
        elif check is not None:
            report(name, check(h, body))
        else:
            report(name, None)
    sock.close()


def h11_raw(h11, report):
    for name, method, extra, raw, status in RAW:
        try:
            sock = raw_socket()
            conn = h11.Connection(h11.CLIENT)
            conn.send(h11.Request(method=method, target="/hello", headers=[("Host", "x")] + extra))
            if not extra:
                conn.send(h11.EndOfMessage())
            sock.sendall(raw)
            resp, _body = h11_events(h11, conn, sock)
            why = None
            connection = (header(str_headers(resp), "Connection") or "").lower()
            if resp.status_code != status:
                why = "status %d, want %d" % (resp.status_code, status)
            elif connection != "close":
                why = "Connection %r, want close" % connection
            else:
                # After a `Connection: close` response h11 expects EOF.
                data = sock.recv(65536)
                conn.receive_data(data)
                ev = conn.next_event()
                if not isinstance(ev, h11.ConnectionClosed):
                    why = "after the response: %r, want the server's close" % ev
            sock.close()
            report(name, why)
        except Exception as e:  # noqa: BLE001
            report(name, "%s: %s" % (type(e).__name__, e))


def main():
    failed = []

    def report(name, why):
        if why is None:
            print("ok   %s %s" % (CLIENT, name))
        else:
            print("FAIL %s %s: %s" % (CLIENT, name, why))
            failed.append(name)

    if CLIENT == "http.client":
        http_client_well_formed(report)
        http_client_raw(report)
    elif CLIENT == "h11":
        import h11

        h11_well_formed(h11, report)
        h11_raw(h11, report)
    else:
        sys.exit("unknown client %r" % CLIENT)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
