"""Check-ins per second over mutual TLS, and CPU per check-in, as ratios to nginx.

Both servers terminate mutual TLS with the same certificates and the same TLS
profile on loopback, two worker processes each. nginx (Debian's package)
answers a static body and issues one session ticket a handshake, as homing
does; homing (``homing serve --workers 2``, its default limits: per-device
check-in and per-station enrollment limits on) validates
the client chain, checks the device's standing in its database and records
every check-in before answering. The load generator is one C process
(``benchmarks/storm_client.c``: one epoll loop on OpenSSL, each device its own
certificate) on the same two cores; its CPU is reported beside the servers'.
``CONCURRENCY`` devices at once, each from a slice of ``DEVICES`` enrolled
devices large enough that none exceeds its check-in limit:

(a) a new TLS connection per check-in (full handshake), homing and nginx;
(b) the same, resuming each device's last TLS 1.3 session (homing's tickets,
    shared by its workers); the figure is resumed / full on homing's side,
    with a check-in and for the handshakes alone (no request), beside nginx's
    own resumed / full for the handshakes alone: the floor the TLS library
    (the same OpenSSL on both) sets for any server on this machine;
(c) kept-alive connections, ``KEPT`` check-ins each (a device's burst), both;
(d) EST ``simpleenroll`` with ready-made CSRs, ``EST_CLIENTS`` at once, over
    ``STATIONS`` factory stations (each within its own limit), on SQLite and,
    when one answers (``HOMING_BENCH_POSTGRES``), on PostgreSQL;
(e) the floor under (a) and (c): homing's own web stack and TLS context
    answering nginx's static body (``benchmarks._floor``), so the report says
    how much of the distance to nginx is the stack and how much homing's work.

A phase in which any device was turned away for checking in too often (429)
is reported as such: its figure is not the one the plan asks for.
"""

from __future__ import annotations

import base64
import http.client
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from cryptography.hazmat.primitives.asymmetric import ec

from benchmarks._haproxy import PROXY_SOURCE, haproxy_front
from benchmarks._server import free_port, homing_process, listening_process
from benchmarks._size import sized
from benchmarks.bench_replicas import _database
from benchmarks.bench_storm import _fleet, _generate
from homing import ceremonies
from homing.operations import fleet as operations
from homing.site import DataDir
from homing.tls import TLS12_CIPHERS

CONCURRENCY = 64
KEPT = 10
EST_CLIENTS = 32
STATIONS = 40


def _ensure_nginx() -> str | None:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "nginx-light"],
        env=env,
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )


def _nginx_conf(prefix: Path, port: int, data: Path) -> Path:
    bundle = prefix / "client-cas.pem"
    bundle.write_bytes(
        (data / "pki" / "root-ca.pem").read_bytes() + (data / "pki" / "device-cas.pem").read_bytes()
    )
    conf = prefix / "nginx.conf"
    conf.write_text(f"""
worker_processes 2;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    server {{
        listen 127.0.0.1:{port} ssl reuseport backlog=1024;
        ssl_certificate {data / "pki" / "server-chain.pem"};
        ssl_certificate_key {data / "keys" / "server-tls.key.pem"};
        ssl_client_certificate {bundle};
        ssl_verify_client optional;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers {TLS12_CIPHERS};
        ssl_ecdh_curve X25519:prime256v1;
        # Homing's ticket policy: one TLS 1.3 ticket a handshake (its key shared by the
        # workers, made by the master), no server-side session cache.
        ssl_session_cache off;
        ssl_session_tickets on;
        ssl_conf_command NumTickets 1;
        keepalive_requests 100000;
        location = /v1/device/checkin {{
            if ($ssl_client_verify != SUCCESS) {{ return 401; }}
            default_type application/json;
            return 200 '{{"device_id":"static","refresh_metadata":false,"update":null}}';
        }}
    }}
}}
""")
    return conf


@contextmanager
def nginx_server(nginx: str, work: Path, data: Path) -> Iterator[tuple[int, int]]:
    """nginx on a free loopback port with the site's certificates: (port, master pid)."""
    port = free_port()
    (work / "nginx").mkdir()
    conf = _nginx_conf(work / "nginx", port, data)
    command = [nginx, "-c", str(conf), "-p", str(work / "nginx"), "-g", "daemon off;"]
    with listening_process(command, port, stop=signal.SIGQUIT) as process:
        yield port, process.pid


def _process_tree(pid: int) -> list[int]:
    """A server process and its workers."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [pid] + ([int(p) for p in children.read_text().split()] if children.exists() else [])


def _phase(
    port: int,
    ca: Path,
    devices: list[tuple[str, str]],
    seconds: float,
    work: Path,
    server_pid: int,
    also: list[int] | None = None,
    **plan: Any,
) -> dict[str, Any]:
    """One closed-loop phase of the C generator, every device once first (not measured);
    the generator reads the server's CPU for the measured part itself."""
    result = _generate(
        {
            "mode": "closed",
            "port": port,
            "ca": str(ca),
            "devices": devices,
            "concurrency": CONCURRENCY,
            "seconds": seconds,
            "timeout": 30,
            "warmup": 1,
            **plan,
        },
        work,
        extra_lines=[f"server_pid {pid}" for pid in [*_process_tree(server_pid), *(also or [])]],
    )
    # A check-in answered, or with requests_per_connection 0 a handshake completed.
    answered = result["outcomes"].get("200", 0) + result["outcomes"].get("handshake", 0)
    result["server_cpu_ms_per_checkin"] = 1000 * result["server_cpu_s"] / max(answered, 1)
    result["client_cpu_ms_per_checkin"] = 1000 * result["client_cpu_s"] / max(answered, 1)
    return result


def _est_rate(port: int, data: Path, count: int, db_url: str | None = None) -> dict[str, Any]:
    """EST enrollments answered per second, ``EST_CLIENTS`` at once, CSRs made beforehand."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.harness import est_csr

    dd = DataDir(data)
    db = dd.database(db_url)
    stations = [
        (f"bench-{i}", operations.add_factory(db, "bench", datetime.now(UTC), f"bench-{i}"))
        for i in range(STATIONS)
    ]
    db.dispose()
    dd.close()
    csrs = [
        base64.b64encode(est_csr(ec.generate_private_key(ec.SECP256R1()), f"est-{i}"))
        for i in range(count)
    ]
    context = ssl.create_default_context(cafile=str(data / "pki" / "root-ca.pem"))
    statuses: list[int] = []
    lock = threading.Lock()
    turn = iter(range(count))

    def client() -> None:
        conn = http.client.HTTPSConnection("localhost", port, context=context, timeout=60)
        try:
            while True:
                with lock:
                    i = next(turn, None)
                if i is None:
                    return
                name, secret = stations[i % STATIONS]
                auth = "Basic " + base64.b64encode(f"{name}:{secret}".encode()).decode()
                conn.request(
                    "POST",
                    "/.well-known/est/simpleenroll",
                    csrs[i],
                    {"Content-Type": "application/pkcs10", "Authorization": auth},
                )
                response = conn.getresponse()
                response.read()
                with lock:
                    statuses.append(response.status)
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(EST_CLIENTS)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    return {
        "enrollments": count,
        "answered_200": statuses.count(200),
        "other": len(statuses) - statuses.count(200),
        "rate_per_s": statuses.count(200) / elapsed,
    }


def run(quick: bool = False) -> dict[str, Any]:
    nginx = _ensure_nginx()
    seconds = sized(quick, 10.0, 4.0, 0.5)
    # Each phase's share of the fleet large enough that no device exceeds its limit
    # (10 at once, then one a minute): a kept-alive connection spends a device's whole
    # burst, so that phase needs a device per connection and gets half the fleet.
    count = sized(quick, 9_000, 3_600, 400)
    enrollments = sized(quick, 3000, 600, 40)
    results: dict[str, Any] = {"concurrency": CONCURRENCY, "kept_alive_per_connection": KEPT}
    os.environ.pop("HOMING_KEY_PASSPHRASE", None)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "data"
        ceremonies.init(data, datetime.now(UTC))
        (work / "fleet").mkdir()
        fleet = _fleet(data, count, work / "fleet")
        # Each phase its own devices: none checks in more often than its limit lets it.
        quarter = count // 4
        new, resumed, kept = fleet[:quarter], fleet[quarter : 2 * quarter], fleet[2 * quarter :]
        ca = data / "pki" / "root-ca.pem"
        with homing_process(data, workers=2) as (url, server):
            port = int(url.rsplit(":", 1)[1])
            results["homing_new_connection"] = _phase(port, ca, new, seconds, work, server.pid)
            results["homing_resumed"] = _phase(
                port, ca, resumed, seconds, work, server.pid, resume=1
            )
            results["homing_keepalive"] = _phase(
                port, ca, kept, seconds, work, server.pid, requests_per_connection=KEPT, warmup=0
            )
            # The handshakes alone (no request), full and resumed: the server's side of it.
            for name, resume in (("full", 0), ("resumed", 1)):
                results[f"homing_handshake_{name}"] = _phase(
                    port, ca, resumed, seconds, work, server.pid, requests_per_connection=0,
                    resume=resume,
                )  # fmt: skip
            results["est"] = _est_rate(port, data, enrollments)
        # The same on PostgreSQL, when one answers (HOMING_BENCH_POSTGRES): the scale backend.
        try:
            with (
                _database() as db_url,
                homing_process(data, workers=2, extra=("--db", db_url)) as (url, _),
            ):
                port = int(url.rsplit(":", 1)[1])
                results["est_postgresql"] = _est_rate(port, data, enrollments, db_url)
        except psycopg.OperationalError as e:
            print(f"EST on PostgreSQL not measured: {e}".splitlines()[0], file=sys.stderr)
        # The deployment option: HAProxy takes the TLS, homing the requests (trusting the
        # certificate header from HAProxy's address only). Both processes' CPU counts.
        proxied = ("--trusted-proxy", f"{PROXY_SOURCE}/32")
        with (
            homing_process(data, workers=2, extra=proxied) as (url, server),
            haproxy_front(work, data, int(url.rsplit(":", 1)[1])) as (front, haproxy_pid),
        ):
            for name, devices, plan in (
                ("new_connection", new, {}),
                ("keepalive", kept, {"requests_per_connection": KEPT, "warmup": 0}),
            ):
                results[f"haproxy_{name}"] = _phase(
                    front, ca, devices, seconds, work, server.pid, also=[haproxy_pid], **plan
                )
        # The floor: homing's web stack and TLS context answering nginx's static body.
        floor_port = free_port()
        floor = [sys.executable, "-m", "benchmarks._floor", str(data), str(floor_port), "2"]
        plans: list[tuple[str, list[tuple[str, str]], dict[str, Any]]] = [
            ("new_connection", new, {}),
            ("keepalive", kept, {"requests_per_connection": KEPT, "warmup": 0}),
        ]
        with listening_process(floor, floor_port) as floor_process:
            for name, devices, options in plans:
                results[f"floor_{name}"] = _phase(
                    floor_port, ca, devices, seconds, work, floor_process.pid, **options
                )
        if nginx:
            with nginx_server(nginx, work, data) as (nginx_port, nginx_pid):
                results["nginx_new_connection"] = _phase(
                    nginx_port, ca, new, seconds, work, nginx_pid
                )
                results["nginx_keepalive"] = _phase(
                    nginx_port,
                    ca,
                    kept,
                    seconds,
                    work,
                    nginx_pid,
                    requests_per_connection=KEPT,
                    warmup=0,
                )
                # OpenSSL's own resumed / full ratio on this machine: the floor under
                # homing's, with the same certificates, groups and tickets.
                for name, resume in (("full", 0), ("resumed", 1)):
                    results[f"nginx_handshake_{name}"] = _phase(
                        nginx_port, ca, resumed, seconds, work, nginx_pid,
                        requests_per_connection=0, resume=resume,
                    )  # fmt: skip
    _report(results)
    return results


def _report(results: dict[str, Any]) -> None:
    print(
        f"check-ins over mutual TLS (2 workers each; C load generator, {CONCURRENCY} devices at"
        " once, on the same 2 cores; homing with its default per-device limits)"
    )
    for name in ("new_connection", "resumed", "keepalive"):
        for server_name in ("homing", "haproxy", "floor", "nginx"):
            r = results.get(f"{server_name}_{name}")
            if not r:
                continue
            print(
                f"  {server_name:6} {name:15} {r['rate_per_s']:8.0f}/s  p50 {r['p50_ms']:6.1f} ms"
                f"  p99 {r['p99_ms']:6.1f} ms  CPU a check-in: server"
                f" {r['server_cpu_ms_per_checkin']:.2f} ms, generator"
                f" {r['client_cpu_ms_per_checkin']:.2f} ms;  {r['outcomes']} {r['handshakes']}"
            )
            if r["outcomes"].get("429"):
                print("    (devices over their check-in limit: give this phase more devices)")
    fronts = {
        "homing": ("", "homing"),
        "haproxy": ("_behind_haproxy", "HAProxy+homing"),
        "floor": ("_floor", "the floor (web stack, static body)"),
    }
    for name in ("new_connection", "keepalive"):
        for front, (suffix, label) in fronts.items():
            h, n = results.get(f"{front}_{name}"), results.get(f"nginx_{name}")
            if not (h and n):
                continue
            key = f"{name}{suffix}"
            results[f"ratio_{key}"] = h["rate_per_s"] / n["rate_per_s"]
            results[f"cpu_ratio_{key}"] = (
                h["server_cpu_ms_per_checkin"] / n["server_cpu_ms_per_checkin"]
            )
            print(
                f"  {label}/nginx ({name}): rate"
                f" {results[f'ratio_{key}']:.2f}x, server CPU a check-in"
                f" {results[f'cpu_ratio_{key}']:.2f}x"
            )
    full, resumed = results["homing_new_connection"], results["homing_resumed"]
    results["resumption_speedup"] = (
        full["server_cpu_ms_per_checkin"] / resumed["server_cpu_ms_per_checkin"]
    )
    print(
        f"  homing resumed vs full handshake: {resumed['rate_per_s'] / full['rate_per_s']:.2f}x"
        f" the rate, server CPU a check-in {results['resumption_speedup']:.2f}x less"
    )
    for server_name in ("homing", "nginx"):
        alone = {k: results.get(f"{server_name}_handshake_{k}") for k in ("full", "resumed")}
        if not (alone["full"] and alone["resumed"]):
            continue
        full_ms = alone["full"]["server_cpu_ms_per_checkin"]
        resumed_ms = alone["resumed"]["server_cpu_ms_per_checkin"]
        key = "" if server_name == "homing" else f"_{server_name}"
        results[f"resumption_speedup_handshakes{key}"] = full_ms / resumed_ms
        print(
            f"  {server_name} handshakes alone (no request): full"
            f" {alone['full']['rate_per_s']:.0f}/s, {full_ms:.2f} ms server CPU each; resumed"
            f" {alone['resumed']['rate_per_s']:.0f}/s, {resumed_ms:.2f} ms:"
            f" {full_ms / resumed_ms:.2f}x less"
        )
    est = results["est"]
    print(
        f"  EST simpleenroll: {est['rate_per_s']:.0f}/s ({EST_CLIENTS} clients, {STATIONS}"
        f" stations; {est['answered_200']} answered 200, {est['other']} other)"
    )
    on_postgresql = results.get("est_postgresql")
    if on_postgresql:
        print(
            f"  EST simpleenroll on PostgreSQL: {on_postgresql['rate_per_s']:.0f}/s"
            f" ({on_postgresql['answered_200']} answered 200, {on_postgresql['other']} other)"
        )


if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
