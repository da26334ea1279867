"""HTTPS end to end, with a private CA and a host certificate the test makes with the openssl command line.

The host serves HTTPS ([network] tls_cert_file, tls_key_file); a runner and the client verify it
against the test's CA ([network] tls_ca_file). Whoever lacks that CA gets one line that says to
set tls_ca_file; the client imports `ssl` only for an https URL; a host whose certificate settings
are wrong exits 2 with one line. The keys never leave the test's temporary folder.
"""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from support import LocalCluster, Proc, cluster_running, program, wait_until, write_toml

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command line")


# ---- a private PKI, made by the test ------------------------------------------------------------
class Pki(NamedTuple):
    ca: Path  # the CA that signed the host's certificate
    other_ca: Path  # a CA that signed nothing the host has
    cert: Path  # the host's certificate: localhost and 127.0.0.1
    key: Path


def _openssl(folder: Path, *args: str) -> None:
    res = subprocess.run(["openssl", *args], cwd=folder, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, f"openssl {' '.join(args)}:\n{res.stderr}"


_EC = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")  # EC keys: made in milliseconds


def _make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    _openssl(folder, "req", "-x509", *_EC, "-keyout", str(key), "-out", str(cert), "-days", "2",
             "-subj", f"/CN=HakuRiver test {name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return cert, key


def _make_host_cert(folder: Path, ca: Path, ca_key: Path,
                    san: str = "DNS:localhost, IP:127.0.0.1") -> tuple[Path, Path]:
    cert, key, csr, ext = folder / "host.pem", folder / "host.key", folder / "host.csr", folder / "host.ext"
    _openssl(folder, "req", "-new", *_EC, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost")
    ext.write_text(f"subjectAltName = {san}\nbasicConstraints = critical, CA:FALSE\n"
    "keyUsage = critical, digitalSignature\nextendedKeyUsage = serverAuth\n")
    _openssl(folder, "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-set_serial", "2",
             "-days", "2", "-out", str(cert), "-extfile", str(ext))
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, ca_key = _make_ca(folder, "ca")
    other_ca, _ = _make_ca(folder, "other-ca")
    cert, key = _make_host_cert(folder, ca, ca_key)
    return Pki(ca, other_ca, cert, key)


# ---- a cluster over HTTPS: the host has the certificate, the runner and client the CA ------------
@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest, pki: Pki):  # noqa: ANN201
    with cluster_running(tmp_path_factory.mktemp("tls-cluster"), request) as c:
        net = c.base["network"]
        # the host's config (host.toml, written by start_host from `base`) has the certificate and key...
        net.update(host_reachable_address="localhost", tls_cert_file=str(pki.cert), tls_key_file=str(pki.key))
        c.start_host(bind_ip="127.0.0.1")
        # ...the runner's and the client's have only the CA (which alone makes them use https://)
        del net["tls_cert_file"], net["tls_key_file"]
        net["tls_ca_file"] = str(pki.ca)
        write_toml(c.config, c.base)
        c.start_runner("a", 2)
        c.wait_online("a")
        yield c


def _client_config(cluster: LocalCluster, path: Path, **network: Any) -> Path:
    """The cluster's client config with [network] keys changed (a value None drops the key)."""
    sections = {k: dict(v) for k, v in cluster.base.items()}
    sections["network"].update(network)
    sections["network"] = {k: v for k, v in sections["network"].items() if v is not None}
    return write_toml(path, sections)


def _one_line_error(res: subprocess.CompletedProcess) -> str:
    assert res.returncode != 0, res.stdout
    assert "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    return lines[0]


# ---- it works, and it is TLS ----------------------------------------------------------------------
def test_runner_comes_online_and_a_task_runs_over_https(tls_cluster: LocalCluster):
    res = tls_cluster.client("--list-nodes")
    assert res.returncode == 0, res.stderr
    states = {line.split()[0]: line.split()[1] for line in res.stdout.splitlines()[1:] if line.strip()}
    assert states == {"a": "online"}

    res = tls_cluster.client("--wait", "--", "echo", "hi")
    assert res.returncode == 0, res.stderr
    task_id = res.stdout.splitlines()[0].strip()
    assert f"task {task_id} completed (exit code 0)" in res.stdout
    row = tls_cluster.task(task_id)
    assert row["state"] == "completed" and Path(row["stdout_path"]).read_text() == "hi\n"

    res = tls_cluster.client("--status", task_id)
    assert res.returncode == 0, res.stderr
    fields = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in res.stdout.splitlines())}
    assert fields["Task ID"] == task_id and fields["State"] == "completed" and fields["Node"] == "a"


def test_the_certificate_covers_the_ip_address_too(tls_cluster: LocalCluster, pki: Pki):
    from hakuriver.client.api import HostClient

    config = _client_config(tls_cluster, tls_cluster.root / "client-ip.toml", host_reachable_address="127.0.0.1")
    res = tls_cluster.client("--list-nodes", config=config)
    assert res.returncode == 0, res.stderr
    assert "online" in res.stdout
    api = HostClient(f"https://127.0.0.1:{tls_cluster.port}", token=tls_cluster.token, ca_file=str(pki.ca))
    assert api.conn.call("GET", "/api/health")


def _raw(port: int, context: ssl.SSLContext | None) -> bytes:
    """GET /api/health on a fresh connection, plain or in TLS; everything the host sends back until it closes."""
    request = b"GET /api/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        sock = context.wrap_socket(raw, server_hostname="localhost") if context else raw
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data


def test_the_traffic_is_tls(tls_cluster: LocalCluster, pki: Pki):
    # plain HTTP gets no HTTP answer: the host closes the connection without a word
    assert not _raw(tls_cluster.port, None).startswith(b"HTTP/")
    # TLS verified with the test's CA: an HTTP answer
    assert _raw(tls_cluster.port, ssl.create_default_context(cafile=str(pki.ca))).startswith(b"HTTP/1.1 200")
    # the certificate is not trusted by the system's CAs nor by another CA
    for context in (ssl.create_default_context(), ssl.create_default_context(cafile=str(pki.other_ca))):
        with pytest.raises(ssl.SSLCertVerificationError):
            _raw(tls_cluster.port, context)


# ---- without the CA: one line that says what to set ---------------------------------------------
@pytest.mark.parametrize("case", ["plain-http", "other-ca", "system-cas"])
def test_a_client_without_the_ca_gets_one_line_naming_tls_ca_file(tls_cluster: LocalCluster, pki: Pki,
                                                                   case: str, tmp_path: Path):
    network: dict[str, Any] = {
        # no TLS keys at all: plain http:// to the HTTPS port
        "plain-http": {"tls_ca_file": None},
        # https://, verified against a CA that did not sign the host's certificate
        "other-ca": {"tls_ca_file": str(pki.other_ca)},
        # the host's own config on the host's machine: https:// by tls_cert_file, but no CA: the system's
        "system-cas": {"tls_ca_file": None, "tls_cert_file": str(pki.cert), "tls_key_file": str(pki.key)},
    }[case]
    config = _client_config(tls_cluster, tmp_path / "client.toml", **network)
    res = tls_cluster.client("--list-nodes", config=config)
    line = _one_line_error(res)
    print(f"{case}: {line}")
    assert res.returncode == 1
    assert line.startswith("hakuriver.client: error: cannot reach the host at ")
    assert "set [network] tls_ca_file" in line


@pytest.mark.parametrize("case", ["other-ca", "plain-http"])
def test_a_runner_without_the_ca_stays_away_and_says_why(tls_cluster: LocalCluster, pki: Pki, case: str):
    name = f"no-ca-{case}"
    config = tls_cluster.runner_config(name, 1)
    sections = tomllib.loads(config.read_text())
    if case == "other-ca":
        sections["network"]["tls_ca_file"] = str(pki.other_ca)
    else:
        del sections["network"]["tls_ca_file"]
    write_toml(config, sections)
    log = tls_cluster.root / f"runner-{name}.log"
    runner = Proc(f"runner-{name}", program("runner") + ["--config", str(config)], log)
    tls_cluster.procs.append(runner)
    try:
        line = wait_until(lambda: next((x for x in log.read_text().splitlines() if "tls_ca_file" in x), None), 15,
                          f"the runner to log why it cannot connect ({log})")
        print(f"{case}: {line}")
        assert runner.alive(), log.read_text()
        assert " WARNING " in line and "heartbeat failed" in line and "set [network] tls_ca_file" in line
        res = tls_cluster.client("--list-nodes")
        assert res.returncode == 0, res.stderr
        assert name not in res.stdout
        assert "Traceback" not in log.read_text()
    finally:
        runner.stop()


# ---- a host that does not serve HTTPS, or whose certificate names another host ---------------
@pytest.fixture(scope="module")
def plain_cluster(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):  # noqa: ANN201
    """A host (no runner) serving plain HTTP."""
    with cluster_running(tmp_path_factory.mktemp("plain-cluster"), request) as c:
        c.start_host()
        yield c


def test_an_https_client_of_a_plain_http_host_gets_one_line(plain_cluster: LocalCluster, pki: Pki, tmp_path: Path):
    config = _client_config(plain_cluster, tmp_path / "client.toml", tls_ca_file=str(pki.ca))
    line = _one_line_error(plain_cluster.client("--list-nodes", config=config))
    print(line)
    url = f"https://127.0.0.1:{plain_cluster.port}"
    assert line.startswith(f"hakuriver.client: error: cannot reach the host at {url}: ")


def test_an_https_client_of_a_plain_http_host_is_told_the_host_does_not_serve_https(
        plain_cluster: LocalCluster, pki: Pki, tmp_path: Path):
    config = _client_config(plain_cluster, tmp_path / "client.toml", tls_ca_file=str(pki.ca))
    line = _one_line_error(plain_cluster.client("--list-nodes", config=config))
    assert "HTTPS" in line or "plain HTTP" in line, line


def test_a_certificate_for_another_name_is_not_blamed_on_the_ca(pki: Pki, tmp_path: Path,
                                                                request: pytest.FixtureRequest):
    folder = tmp_path / "pki"
    folder.mkdir()
    cert, key = _make_host_cert(folder, pki.ca, pki.ca.with_suffix(".key"), san="DNS:elsewhere.example")
    with cluster_running(tmp_path, request) as cluster:
        net = cluster.base["network"]
        net.update(tls_cert_file=str(cert), tls_key_file=str(key))
        cluster.start_host(bind_ip="127.0.0.1")
        config = _client_config(cluster, tmp_path / "client.toml", tls_cert_file=None, tls_key_file=None,
                                tls_ca_file=str(pki.ca), host_reachable_address="localhost")
        line = _one_line_error(cluster.client("--list-nodes", config=config))
        assert "not valid for 'localhost'" in line, line
        assert "set [network] tls_ca_file" not in line and "host_reachable_address" in line, line


# ---- ssl is imported by the client only for https ---------------------------------------------
def _client_imports(config: Path) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run the real client entry point under `python -X importtime`: its result, and the modules it imported."""
    argv = program("client")
    argv = argv[:1] + ["-X", "importtime"] + argv[1:] if argv[0] == sys.executable else \
        [sys.executable, "-X", "importtime", *argv]
    res = subprocess.run(argv + ["--config", str(config), "--list-nodes"], capture_output=True, text=True,
                         timeout=60, stdin=subprocess.DEVNULL)
    modules = {m.group(1).strip() for m in re.finditer(r"^import time:[^|]*\|[^|]*\|(.*)$", res.stderr, re.M)}
    assert "hakuriver.client.cli" in modules, res.stderr[-2000:]
    return res, modules


def test_the_client_imports_ssl_only_for_https(tls_cluster: LocalCluster, plain_cluster: LocalCluster):
    res, modules = _client_imports(plain_cluster.config)
    assert res.returncode == 0, res.stderr[-2000:]
    assert not {"ssl", "_ssl"} & modules

    res, modules = _client_imports(tls_cluster.config)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "online" in res.stdout
    assert {"ssl", "_ssl"} <= modules


def test_the_https_host_logged_no_traceback(tls_cluster: LocalCluster):
    """After every client and runner above that spoke to it without the CA, or in plain HTTP."""
    log = (tls_cluster.root / "host.log").read_text()
    assert "(HTTPS)" in log and "Traceback" not in log, log


# ---- a host whose certificate settings are wrong: exit 2, one line ----------------------------
@pytest.fixture(scope="module")
def started_before(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """The config sections of a host that has started once (its database, cluster key and admin exist)."""
    cluster = LocalCluster(tmp_path_factory.mktemp("started-before"))
    cluster.start_host()
    cluster.host.stop()
    return cluster.base


def _bad_tls(pki: Pki, folder: Path, case: str) -> tuple[dict[str, str], list[str]]:
    """[network] keys of a misconfigured case, and the words the host's error must contain."""
    missing = str(folder / "missing.pem")
    garbage = folder / "garbage.pem"
    garbage.write_text("not a certificate\n")
    if case == "key-of-another-cert":  # the key of a certificate the host was not given
        _, other_key = _make_host_cert(folder, pki.other_ca, pki.other_ca.with_suffix(".key"))
        return {"tls_cert_file": str(pki.cert), "tls_key_file": str(other_key)}, ["tls_key_file"]
    return {
        "cert-only": ({"tls_cert_file": str(pki.cert)}, ["tls_key_file"]),
        "key-only": ({"tls_key_file": str(pki.key)}, ["tls_cert_file"]),
        "no-such-cert": ({"tls_cert_file": missing, "tls_key_file": str(pki.key)}, ["tls_cert_file", missing]),
        "no-such-key": ({"tls_cert_file": str(pki.cert), "tls_key_file": missing}, ["tls_key_file", missing]),
        "not-a-cert": ({"tls_cert_file": str(garbage), "tls_key_file": str(pki.key)}, ["tls_cert_file"]),
    }[case]


def _run_host(sections: dict[str, dict[str, Any]], tls: dict[str, str], folder: Path) -> subprocess.CompletedProcess:
    sections = {k: dict(v) for k, v in sections.items()}
    sections["network"].update(tls)
    config = write_toml(folder / "host.toml", sections)
    return subprocess.run(program("host") + ["--config", str(config)], capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("case", ["cert-only", "key-only", "no-such-cert", "no-such-key", "not-a-cert",
                                  "key-of-another-cert"])
def test_a_misconfigured_host_exits_2_with_one_line(pki: Pki, started_before: dict[str, dict[str, Any]],
                                                    case: str, tmp_path: Path):
    tls, expected = _bad_tls(pki, tmp_path, case)
    res = _run_host(started_before, tls, tmp_path)
    print(f"{case}: {res.stderr.strip()}")
    assert res.returncode == 2, res.stderr
    line = _one_line_error(res)
    assert line.startswith("hakuriver.host: error: ")
    for word in expected:
        assert word in line


def test_a_misconfigured_first_start_exits_2_with_one_line_and_makes_nothing(pki: Pki, tmp_path: Path):
    sections = LocalCluster(tmp_path).base
    tls, _ = _bad_tls(pki, tmp_path, "cert-only")
    res = _run_host(sections, tls, tmp_path)
    assert res.returncode == 2, res.stderr
    _one_line_error(res)
    assert not Path(sections["auth"]["cluster_key_file"]).exists()
