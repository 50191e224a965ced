"""Check-ins per second over mutual TLS, as a ratio to nginx on the same machine.

Both servers terminate mutual TLS with the same certificates and the same TLS
profile. nginx (Debian's package, started here on loopback with two worker
processes) answers a static body; homing (``homing serve --workers 2``)
validates the client chain, checks revocation in its database and records
every check-in before answering. The load generator is curl (C, libcurl),
one process per simulated device (16 at once), on the same two cores:

(a) a new TLS connection per check-in (``Connection: close``, full handshake);
(b) keep-alive connections.

Latency is curl's ``time_total`` per check-in (p50, p99).
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7

from benchmarks._server import free_port, homing_server, wait_for_port
from homing import ceremonies
from homing.operations import fleet as operations
from homing.site import DataDir
from homing.tls import TLS12_CIPHERS

CONCURRENCY = 16
_BODY = '{"firmware_version":"1.0","trust":{"root":1,"timestamp":1,"targets":1}}'
_CURL_BODY = '"' + _BODY.replace('"', '\\"') + '"'


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
        ssl_session_cache off;
        ssl_session_tickets off;
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


def _enroll(port: int, data: Path, devices: int, out: Path) -> list[tuple[Path, Path]]:
    import http.client
    import ssl

    dd = DataDir(data)
    secret = operations.add_factory(dd.database(), "bench", datetime.now(UTC), "bench")
    dd.close()
    auth = "Basic " + base64.b64encode(f"bench:{secret}".encode()).decode()
    context = ssl.create_default_context(cafile=str(data / "pki" / "root-ca.pem"))
    pairs = []
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.harness import est_csr

    for i in range(devices):
        key = ec.generate_private_key(ec.SECP256R1())
        conn = http.client.HTTPSConnection("localhost", port, context=context)
        conn.request(
            "POST",
            "/.well-known/est/simpleenroll",
            base64.b64encode(est_csr(key, f"bench-{i}")),
            {"Content-Type": "application/pkcs10", "Authorization": auth},
        )
        response = conn.getresponse()
        body = response.read()
        conn.close()
        assert response.status == 200, body
        cert = pkcs7.load_der_pkcs7_certificates(base64.b64decode(body))[0]
        cert_file, key_file = out / f"dev{i}.pem", out / f"dev{i}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        pairs.append((cert_file, key_file))
    return pairs


def _load(
    port: int,
    ca: Path,
    devices: list[tuple[Path, Path]],
    requests: int,
    keepalive: bool,
    work: Path,
) -> dict[str, float]:
    """One curl process per device, CONCURRENCY devices at once; rate and latency percentiles.

    Each device sends its check-ins one after another (as a device does),
    over one kept-alive connection or a new connection each time.
    """
    per = requests // len(devices)
    procs = []
    for g, (cert, key) in enumerate(devices):
        lines = []
        for i in range(per):
            if i:
                lines.append("next")
            lines += [
                f'url = "https://localhost:{port}/v1/device/checkin"',
                f'cacert = "{ca}"',
                f'cert = "{cert}"',
                f'key = "{key}"',
                'header = "Content-Type: application/json"',
                f"data = {_CURL_BODY}",
                'output = "/dev/null"',
                'write-out = "%{http_code} %{time_total}\\n"',
            ]
            if not keepalive:
                lines.append('header = "Connection: close"')
        config = work / f"curl-{g}.conf"
        config.write_text("\n".join(lines) + "\n")
        procs.append(
            subprocess.Popen(
                ["curl", "-s", "-K", str(config)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
            )
        )
    start = time.perf_counter()
    outputs = [p.communicate()[0].decode() for p in procs]
    elapsed = time.perf_counter() - start
    latencies: list[float] = []
    failures = 0
    for out in outputs:
        for line in out.splitlines():
            code, _, seconds = line.partition(" ")
            if code != "200":
                failures += 1
            latencies.append(float(seconds))
    latencies.sort()
    q = statistics.quantiles(latencies, n=100)
    return {
        "requests": len(latencies),
        "failures": failures,
        "rate_per_s": len(latencies) / elapsed,
        "p50_ms": q[49] * 1000,
        "p99_ms": q[98] * 1000,
    }


def _count_checkins(data: Path) -> int:
    """Check-ins recorded (each device's count; its history keeps only the newest)."""
    from sqlalchemy import func, select

    from homing.store.schema import devices

    dd = DataDir(data)
    with dd.database().engine.connect() as conn:
        count = int(conn.execute(select(func.sum(devices.c.checkin_seq))).scalar_one() or 0)
    dd.close()
    return count


def run(quick: bool = False) -> dict[str, Any]:
    if shutil.which("curl") is None:
        print("check-in benchmark skipped: curl is missing")
        return {"skipped": "curl missing"}
    nginx = _ensure_nginx()
    new_conn_requests = 600 if quick else 3000
    keepalive_requests = 2000 if quick else 20000
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "data"
        os.environ.pop("HOMING_KEY_PASSPHRASE", None)
        ceremonies.init(data, datetime.now(UTC))
        nginx_proc = None
        # Sixteen devices checking in thousands of times each: the per-device and
        # per-station limits would turn them away, which is not what is measured.
        server = homing_server(
            data, workers=2, extra=("--checkin-limit", "off", "--enroll-limit", "off")
        )
        url = server.__enter__()
        port = int(url.rsplit(":", 1)[1])
        try:
            started = time.perf_counter()
            enrolled = 50 if quick else 200
            devices = _enroll(port, data, enrolled, work)[:CONCURRENCY]
            results["est_enrollments_per_s"] = enrolled / (time.perf_counter() - started)
            ca = data / "pki" / "root-ca.pem"
            before = _count_checkins(data)
            results["homing_new_connection"] = _load(
                port, ca, devices, new_conn_requests, False, work
            )
            results["homing_keepalive"] = _load(port, ca, devices, keepalive_requests, True, work)
            recorded = _count_checkins(data) - before
            results["homing_checkins_recorded"] = recorded
            if nginx:
                nginx_port = free_port()
                (work / "nginx").mkdir()
                conf = _nginx_conf(work / "nginx", nginx_port, data)
                nginx_proc = subprocess.Popen(
                    [nginx, "-c", str(conf), "-p", str(work / "nginx"), "-g", "daemon off;"],
                    stderr=subprocess.DEVNULL,
                )
                wait_for_port(nginx_port, nginx_proc)
                results["nginx_new_connection"] = _load(
                    nginx_port, ca, devices, new_conn_requests, False, work
                )
                results["nginx_keepalive"] = _load(
                    nginx_port, ca, devices, keepalive_requests, True, work
                )
                results["ratio_new_connection"] = (
                    results["homing_new_connection"]["rate_per_s"]
                    / results["nginx_new_connection"]["rate_per_s"]
                )
                results["ratio_keepalive"] = (
                    results["homing_keepalive"]["rate_per_s"]
                    / results["nginx_keepalive"]["rate_per_s"]
                )
        finally:
            server.__exit__(None, None, None)
            if nginx_proc is not None:
                nginx_proc.send_signal(signal.SIGQUIT)
                nginx_proc.wait(timeout=30)
    print("check-ins over mutual TLS (2 workers each, curl load on the same 2 cores)")
    for name in ("new_connection", "keepalive"):
        for server_name in ("homing", "nginx"):
            r = results.get(f"{server_name}_{name}")
            if r:
                rate = r["rate_per_s"]
                print(
                    f"  {server_name:6} {name:15} {rate:8.0f}/s  p50 {r['p50_ms']:6.1f} ms"
                    f"  p99 {r['p99_ms']:6.1f} ms  failures {r['failures']}"
                )
        if f"ratio_{name}" in results:
            print(f"  ratio homing/nginx ({name}): {results[f'ratio_{name}']:.2f}")
    print(f"  check-ins recorded by homing: {results['homing_checkins_recorded']}")
    print(
        f"  EST enrollments (one client, key generation included): "
        f"{results['est_enrollments_per_s']:.0f}/s"
    )
    return results
