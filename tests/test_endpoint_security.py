"""Endpoint defences: the control socket serves only its own user and root, and the metrics
endpoint does basic auth and TLS without ever letting a client stall the serve loop, rejects
bad requests with 400, and exposes figures only (no environment, paths or command line)."""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import os
import re
import select
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import prefork_handlers
import psutil
import pytest
from conftest import metrics_endpoint, serving, tcp_request, wait_for_line, wait_until
from prefork_handlers import Commands
from server_process import ServerProcess, unprivileged_uid

import sockherd
from sockherd.metrics import endpoint as endpoint_module
from sockherd.metrics.endpoint_security import BasicAuth, MetricsTLSError

USER, PASSWORD = "scraper", "s3cret-Pa55word-xyz"


needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not hasattr(socket, "SO_PEERCRED"),
    reason="needs root (to connect as another uid) and SO_PEERCRED (Linux)",
)


# --- the control socket -----------------------------------------------------------------

SUPERVISOR = """
class Server(ReportReady, sockherd.PreforkTCPServer):
    pass

server = Server(("127.0.0.1", 0), prefork_handlers.Commands, workers=1, control_socket=CONTROL)
server.metrics_address = ("127.0.0.1", 0)
with server:
    server.serve_forever(0.1)
"""


@pytest.fixture
def shared_directory():
    """A directory every user may traverse (0711) but not list or write."""
    directory = tempfile.mkdtemp(prefix="sockherd-ctl-", dir="/tmp")
    os.chmod(directory, 0o711)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def connect_as(uid: int, path: str, line: bytes, timeout: float = 15.0) -> str:
    """From a forked child running as `uid`: connect to `path`, send `line`, read to EOF.
    Returns "reply <bytes received>" or "error <ERRNO>"."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: must end in os._exit, whatever happens
        code = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            try:
                with socket.socket(socket.AF_UNIX) as client:
                    client.settimeout(10)
                    client.connect(path)
                    client.sendall(line)
                    received = b""
                    while chunk := client.recv(4096):
                        received += chunk
                result = b"reply " + received
            except OSError as error:
                result = f"error {errno.errorcode.get(error.errno or 0, error)}".encode()
            os.write(write_end, result)
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([read_end], [], [], deadline - time.monotonic())[0]:
                chunk = os.read(read_end, 65536)
                if not chunk:
                    break
                data += chunk
    finally:
        os.close(read_end)
        _pid, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, data
    return data.decode()


@needs_root
def test_control_socket_is_0600_so_other_users_cannot_even_connect(shared_directory):
    control = os.path.join(shared_directory, "control.sock")
    uid = unprivileged_uid()
    with ServerProcess(SUPERVISOR.replace("CONTROL", repr(control))) as run:
        mode = os.stat(control).st_mode
        outcome = connect_as(uid, control, b"status\n")
        print(f"\ncontrol socket mode {stat.filemode(mode)}; uid {uid}: {outcome}")
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        assert outcome == "error EACCES"
        from sockherd.supervisor.control import send_command

        assert send_command(control, "status")["ok"] is True  # root still is served
        assert run.stop() == 0
    assert "refused" not in run.log  # the filesystem stopped it before the supervisor saw it


@needs_root
def test_another_uid_is_refused_by_peer_credentials_even_on_a_world_writable_socket(
    shared_directory,
):
    from sockherd.supervisor.control import send_command

    control = os.path.join(shared_directory, "control.sock")
    uid = unprivileged_uid()
    with ServerProcess(SUPERVISOR.replace("CONTROL", repr(control))) as run:
        address = run.address
        os.chmod(control, 0o666)  # an operator's mistake: now only SO_PEERCRED stands guard
        outcome = connect_as(uid, control, b"stop\n")
        logged = run.wait_for("refused a client")
        status = send_command(control, "status")
        reply = tcp_request(address, b"echo still serving\n")
        assert run.stop() == 0
    print(f"\nuid {uid} on a 0666 control socket: {outcome!r}; logged: {logged!r}")
    kind, _, body = outcome.partition(" ")
    assert kind == "reply"
    answer = json.loads(body)
    assert answer["ok"] is False
    assert answer["error"].startswith(
        f"permission denied: uid {uid} may not control this supervisor"
    )
    assert f"refused a client running as uid {uid}" in logged
    assert run.log.count("refused a client") == 1
    assert status["ok"] is True and len(status["workers"]) == 1  # the "stop" was not obeyed
    assert reply.endswith(b"still serving\n")


# --- the metrics endpoint: TLS and basic auth ---------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """(certfile, keyfile) of a self-signed certificate for 127.0.0.1, made with openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not installed (it makes the test certificate)")
    directory = tmp_path_factory.mktemp("tls")
    certfile, keyfile = str(directory / "cert.pem"), str(directory / "key.pem")
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            keyfile,
            "-out",
            certfile,
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return certfile, keyfile


def metrics_server(certificate=None, auth=(USER, PASSWORD), cls=sockherd.TCPServer, **settings):
    server = cls(("127.0.0.1", 0), Commands, **settings)
    server.metrics_address = ("127.0.0.1", 0)
    server.metrics_name = "secured"
    server.metrics_basic_auth = auth
    if certificate is not None:
        server.metrics_tls_certfile, server.metrics_tls_keyfile = certificate
    return server


def metrics_port(server) -> int:
    return metrics_endpoint(server).address[1]


def get(port: int, cafile: str | None = None, credentials=None, path: str = "/metrics"):
    """(status, headers, body) of one GET, over TLS trusting `cafile` if given."""
    scheme = "https" if cafile else "http"
    request = urllib.request.Request(f"{scheme}://127.0.0.1:{port}{path}")
    if credentials is not None:
        token = base64.b64encode(":".join(credentials).encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    context = ssl.create_default_context(cafile=cafile) if cafile else None
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers, error.read()


def raw_exchange(port: int, payload: bytes, timeout: float = 10.0) -> bytes:
    """Send `payload` in plain TCP and read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as client:
        client.sendall(payload)
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := client.recv(65536):
                received += chunk
    return received


def test_scrape_over_tls_with_the_right_credentials_works(certificate):
    server = metrics_server(certificate)
    with serving(server, poll_interval=0.05):
        tcp_request(server.server_address, b"echo counted\n")
        port = metrics_port(server)
        started = time.monotonic()
        status, headers, body = get(port, certificate[0], (USER, PASSWORD))
        elapsed = time.monotonic() - started
        # The operator's pages share the port, the TLS and the credentials.
        code, _, document = get(port, certificate[0], (USER, PASSWORD), "/status.json")
        assert code == 200 and json.loads(document)["servers"][0]["requests"]["ok"] == 1
        assert get(port, certificate[0], (USER, PASSWORD), "/readyz")[::2] == (200, b"ready\n")
        assert get(port, certificate[0], (USER, PASSWORD), "/status")[2].startswith(b"<!DOCTYPE")
    print(f"\nTLS scrape with basic auth: {status}, {len(body)} bytes in {elapsed * 1000:.1f} ms")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert b'sockherd_requests_total{server="secured",worker="",outcome="ok"} 1' in body


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls_refuses_protocols_older_than_tls_1_2(certificate):
    server = metrics_server(certificate)
    outcomes = {}
    with serving(server, poll_interval=0.05):
        port = metrics_port(server)
        for version in ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1_2:
            context = ssl.create_default_context(cafile=certificate[0])
            context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client offer old versions
            context.minimum_version = context.maximum_version = version
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                    with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                        outcomes[version.name] = tls.version()
            except ssl.SSLError as error:
                outcomes[version.name] = error.reason
        assert get(port, certificate[0], (USER, PASSWORD))[0] == 200
    print(f"\nhandshakes by client version: {outcomes}")
    assert outcomes == {
        "TLSv1": "TLSV1_ALERT_PROTOCOL_VERSION",  # the server's alert: it refuses
        "TLSv1_1": "TLSV1_ALERT_PROTOCOL_VERSION",
        "TLSv1_2": "TLSv1.2",
    }


@pytest.mark.parametrize(
    "credentials, header",
    [
        (None, None),
        ((USER, "wrong-password"), None),
        (("someone", PASSWORD), None),
        (None, "Bearer " + PASSWORD),
        (None, "Basic !!not-base64!!"),
        (None, "Basic " + base64.b64encode(PASSWORD.encode()).decode()),  # no user: part
    ],
    ids=["missing", "wrong-password", "wrong-user", "other-scheme", "bad-base64", "no-colon"],
)
def test_missing_or_wrong_credentials_get_401_with_a_basic_challenge(
    certificate, credentials, header, caplog, capfd
):
    caplog.set_level("DEBUG")
    server = metrics_server(certificate)
    with serving(server, poll_interval=0.05):
        port = metrics_port(server)
        if header is None:
            status, headers, body = get(port, certificate[0], credentials)
        else:
            request = urllib.request.Request(f"https://127.0.0.1:{port}/metrics")
            request.add_header("Authorization", header)
            context = ssl.create_default_context(cafile=certificate[0])
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=10, context=context)
            with refused.value as error:
                status, headers, body = error.code, error.headers, error.read()
        for path in ("/", "/nope", "/status", "/status.json", "/livez", "/readyz"):
            # every path is behind the auth
            assert get(port, certificate[0], credentials, path)[0] == 401
        assert get(port, certificate[0], (USER, PASSWORD))[0] == 200
    print(f"\n{status} {headers['WWW-Authenticate']}")  # never the credentials themselves
    assert status == 401
    assert headers["WWW-Authenticate"] == 'Basic realm="sockherd"'
    assert body == b"authentication required\n"
    output = capfd.readouterr()
    assert PASSWORD not in caplog.text + output.out + output.err
    assert PASSWORD not in repr(BasicAuth((USER, PASSWORD)))


def test_plain_http_to_the_tls_port_gets_a_clear_400_and_does_not_hang_the_server(certificate):
    server = metrics_server(certificate)
    with serving(server, poll_interval=0.05):
        port = metrics_port(server)
        started = time.monotonic()
        response = raw_exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        elapsed = time.monotonic() - started
        assert get(port, certificate[0], (USER, PASSWORD))[0] == 200
        assert tcp_request(server.server_address, b"echo served\n").endswith(b"served\n")
    print(f"\nplain HTTP to the TLS port: {response.splitlines()[0]!r} in {elapsed * 1000:.1f} ms")
    assert response.startswith(b"HTTP/1.0 400 Bad Request\r\n")
    assert response.endswith(
        f"this endpoint speaks HTTPS: use https://127.0.0.1:{port}/metrics\n".encode()
    )


def test_clients_that_stall_before_or_during_the_handshake_block_nothing_and_are_dropped(
    certificate, monkeypatch
):
    deadline = 1.0
    monkeypatch.setattr(endpoint_module, "CLIENT_DEADLINE", deadline)
    server = metrics_server(certificate)
    with serving(server, poll_interval=0.05):
        port = metrics_port(server)
        silent = socket.create_connection(("127.0.0.1", port), timeout=10)
        half = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            half.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello's start
            connected_at = time.monotonic()
            timings = []
            for _ in range(3):
                started = time.monotonic()
                assert get(port, certificate[0], (USER, PASSWORD))[0] == 200
                timings.append(time.monotonic() - started)
            assert tcp_request(server.server_address, b"echo served\n").endswith(b"served\n")
            wait_until(lambda: len(metrics_endpoint(server)._clients) == 2)  # both still held
            dropped = []
            for stalled in (silent, half):
                with contextlib.suppress(ConnectionResetError):
                    assert stalled.recv(100) == b""  # the server closed it
                dropped.append(time.monotonic() - connected_at)
        finally:
            silent.close()
            half.close()
        wait_until(lambda: not metrics_endpoint(server)._clients)
    print(
        f"\nscrapes while 2 clients stall: {[f'{t * 1000:.1f} ms' for t in timings]}; "
        f"stalled clients dropped after {[f'{t:.2f} s' for t in dropped]} "
        f"(CLIENT_DEADLINE={deadline} s)"
    )
    assert max(timings) < deadline  # none waited for the stalled clients
    assert all(deadline * 0.9 <= t < deadline + 2.0 for t in dropped)


# --- the metrics endpoint: bad requests -----------------------------------------------------

BAD_REQUESTS = {
    "long-line": (b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\n\r\n", 400, b"request line longer"),
    "endless-line": (b"A" * 5000, 400, b"request line longer than 1024 bytes"),
    "no-version": (b"GET /metrics\r\n\r\n", 400, b"malformed request line"),
    "no-slash": (b"GET metrics HTTP/1.1\r\n\r\n", 400, b"malformed request line"),
    "extra-word": (b"GET /metrics HTTP/1.1 please\r\n\r\n", 400, b"malformed request line"),
    "binary": (b"\x00\xffGET /metrics HTTP/1.1\r\n\r\n", 400, b"malformed request line"),
    "lower-case": (b"get /metrics HTTP/1.1\r\n\r\n", 400, b"malformed request line"),
    "http2": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, b"malformed request line"),
    "long-head": (
        b"GET /metrics HTTP/1.1\r\nX-Filler: " + b"a" * (8192 - 33) + b"\r\n",
        431,
        b"request head longer than 8192 bytes",
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_oversize_or_malformed_requests_get_a_clear_400(case):
    payload, status, message = BAD_REQUESTS[case]
    server = metrics_server()  # with auth: a bad request is answered before the auth check
    with serving(server, poll_interval=0.05):
        port = metrics_port(server)
        response = raw_exchange(port, payload)
        assert get(port, None, (USER, PASSWORD))[0] == 200  # and the endpoint still works
    print(f"\n{case} ({len(payload)} bytes): {response.splitlines()[0]!r}")
    assert response.startswith(f"HTTP/1.0 {status} ".encode())
    assert message in response


def test_a_flood_of_endless_requests_does_not_grow_memory():
    server = metrics_server()
    rss = psutil.Process().memory_info().rss
    sent_total = 0
    statuses = set()
    with serving(server, poll_interval=0.05):
        port = metrics_port(server)
        chunk = b"GET /metrics HTTP/1.1\r\n" + b"X-Header: " + b"a" * 65536
        for _ in range(50):  # bounded: 50 clients, each offering 4 MiB of never-ending head
            with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
                try:
                    for _ in range(64):
                        client.sendall(chunk)
                        sent_total += len(chunk)
                except (ConnectionResetError, BrokenPipeError):
                    pass  # the server answered and closed: it takes no more
                with contextlib.suppress(ConnectionResetError):
                    statuses.add(client.recv(12))
        assert get(port, None, (USER, PASSWORD))[0] == 200
        wait_until(lambda: not metrics_endpoint(server)._clients)  # nothing held on to
    growth = psutil.Process().memory_info().rss - rss
    print(
        f"\n50 clients with endless heads: {sent_total / 2**20:.1f} MiB accepted by the kernel, "
        f"resident memory grew {growth / 2**20:.2f} MiB, answers {sorted(statuses)}"
    )
    assert growth < 4 * 2**20
    assert statuses <= {b"HTTP/1.0 431", b""}


# --- the exposition: figures only --------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "forking", "prefork"])
def test_the_exposition_carries_no_environment_paths_or_command_line(
    mode, certificate, monkeypatch
):
    monkeypatch.setenv("SOCKHERD_CANARY", "canary-7f3a9-must-not-be-scraped")
    cls = {
        "sync": sockherd.TCPServer,
        "forking": sockherd.ForkingTCPServer,
        "prefork": sockherd.PreforkTCPServer,
    }[mode]
    settings = {"workers": 1} if mode == "prefork" else {}
    server = metrics_server(certificate, cls=cls, **settings)
    with serving(server, poll_interval=0.05):
        tcp_request(server.server_address, b"echo one\n")
        status, _headers, body = get(metrics_port(server), certificate[0], (USER, PASSWORD))
    text = body.decode()
    secrets = {
        value
        for value in os.environ.values()
        if len(value) > 6 and not value.replace(".", "").replace("-", "").isdigit()
    }  # numbers are what an exposition is made of; a number-only variable says nothing
    secrets |= {argument for argument in sys.argv if len(argument) > 6}
    secrets |= {
        os.getcwd(),
        os.path.abspath(prefork_handlers.__file__),
        os.path.dirname(os.path.abspath(prefork_handlers.__file__)),
        os.path.dirname(os.path.abspath(sockherd.__file__)),
        sys.executable,
        sys.prefix,
        certificate[0],
        PASSWORD,
    }
    found = sorted(secret for secret in secrets if secret in text)
    print(f"\n{mode}: {len(text)} bytes checked against {len(secrets)} strings; found {found}")
    assert status == 200
    assert found == []
    assert re.findall(r'(?:^|[\s"=])/[\w.-]+', text) == []  # no path of any kind


# --- settings that cannot work fail at start --------------------------------------------------


@pytest.fixture(scope="module")
def encrypted_key(certificate, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tls-encrypted") / "encrypted-key.pem")
    subprocess.run(
        ["openssl", "pkey", "-in", certificate[1], "-aes256", "-passout", "pass:x", "-out", path],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return path


def start_error(**attributes) -> str:
    """The message serve_forever() fails with on a server with these attributes."""
    server = sockherd.TCPServer(("127.0.0.1", 0), Commands)
    server.metrics_address = ("127.0.0.1", 0)
    for name, value in attributes.items():
        setattr(server, name, value)
    try:
        with pytest.raises((MetricsTLSError, ValueError)) as failure:
            server.serve_forever(0.05)
    finally:
        server.server_close()
    return str(failure.value)


def test_bad_certificate_or_key_settings_fail_at_start_naming_the_file(
    certificate, encrypted_key, tmp_path
):
    certfile, keyfile = certificate
    missing = str(tmp_path / "missing-cert.pem")
    messages = {
        "missing": start_error(metrics_tls_certfile=missing),
        "directory": start_error(metrics_tls_certfile=str(tmp_path)),
        "key is a cert": start_error(metrics_tls_certfile=certfile, metrics_tls_keyfile=certfile),
        "no key": start_error(metrics_tls_certfile=certfile),
        "encrypted": start_error(metrics_tls_certfile=certfile, metrics_tls_keyfile=encrypted_key),
        "key only": start_error(metrics_tls_keyfile=keyfile),
        "auth string": start_error(metrics_basic_auth=f"{USER}:{PASSWORD}"),
    }
    for case, message in messages.items():
        print(f"\n{case}: {message}")
    assert (
        f"certificate file {missing!r} does not exist: fix metrics_tls_certfile"
        in messages["missing"]
    )
    assert "openssl req -x509" in messages["missing"]
    assert f"{str(tmp_path)!r} is a directory" in messages["directory"]
    assert (
        f"cannot use the certificate {certfile!r} with the private key {certfile!r}"
        in messages["key is a cert"]
    )
    assert "matching unencrypted PEM private key" in messages["key is a cert"]
    assert "with a private key in the same file" in messages["no key"]
    assert f"private key {encrypted_key!r} is encrypted" in messages["encrypted"]
    assert "set both (--metrics-tls-cert and --metrics-tls-key) or neither" in messages["key only"]
    assert "(user, password) pair" in messages["auth string"]
    assert PASSWORD not in messages["auth string"]


def test_prefork_settings_are_checked_before_any_worker_is_forked(certificate):
    with pytest.raises(MetricsTLSError, match="does not exist"):
        sockherd.PreforkTCPServer(
            ("127.0.0.1", 0), Commands, workers=1, metrics_tls_certfile="/nonexistent/cert.pem"
        )
    with pytest.raises(ValueError, match="may not contain ':'"):
        sockherd.PreforkTCPServer(
            ("127.0.0.1", 0), Commands, workers=1, metrics_basic_auth=("a:b", "c")
        )
    server = sockherd.PreforkTCPServer(
        ("127.0.0.1", 0),
        Commands,
        workers=1,
        metrics_basic_auth=(USER, PASSWORD),
        metrics_tls_certfile=certificate[0],
        metrics_tls_keyfile=certificate[1],
    )
    server.metrics_address = ("127.0.0.1", 0)
    with serving(server, poll_interval=0.05):
        assert get(metrics_port(server), certificate[0], (USER, PASSWORD))[0] == 200


def test_the_command_serves_metrics_over_tls_with_basic_auth(tmp_path, certificate):
    """`sockherd serve --metrics … --metrics-auth-file … --metrics-tls-cert/-key`."""
    certfile, keyfile = certificate
    credentials = tmp_path / "metrics-credentials"
    credentials.write_text("prometheus:s3cret-from-a-file\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        metrics_port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "sockherd", "serve", "sockherd.examples.echo:EchoHandler",
         "--bind", "127.0.0.1:0", "--mode", "sync", "--metrics", f"127.0.0.1:{metrics_port}",
         "--metrics-auth-file", str(credentials), "--metrics-tls-cert", certfile,
         "--metrics-tls-key", keyfile],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for_line(process.stderr, f"metrics on https://127.0.0.1:{metrics_port}/metrics")
        context = ssl.create_default_context(cafile=certfile)
        url = f"https://127.0.0.1:{metrics_port}/metrics"
        token = base64.b64encode(b"prometheus:s3cret-from-a-file").decode()

        def scraped():
            request = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
            try:
                with urllib.request.urlopen(request, context=context, timeout=5) as response:
                    return response.read().decode()
            except urllib.error.URLError:
                return None

        assert "sockherd_requests_total" in wait_until(scraped)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, context=context, timeout=5)
        assert refused.value.code == 401
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "s3cret" not in err
