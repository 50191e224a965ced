#!/usr/bin/env bash
# The Debian tools homing's tests drive for real: headless Chromium (the web
# fleet view), promtool (the shipped alert rules), systemd-analyze (the
# shipped units), pebble with its challenge test server (ACME) and SoftHSM2
# (PKCS#11 keys), HAProxy and iproute2 (replicas in network namespaces),
# curl (the EST recipe and the server unit's readiness probe), mosquitto and
# its clients (a device application's MQTT through homing's trust), tinyproxy
# (a site's egress proxy the agent tunnels through), RAUC with mksquashfs for its
# bundles and a D-Bus daemon for its service, and SWUpdate (A/B updaters);
# a C compiler and OpenSSL's headers build the storm benchmark's load
# generator (benchmarks/storm_client.c) and its test; a software TPM (swtpm),
# its resource manager (tpm2-abrmd) and OpenSSL's tpm2 provider hold a device
# key in a TPM, and OpenSSL's pkcs11 engine one on a PKCS#11 token; faketime runs
# the installed agent months ahead.
# Installs what is missing when run as root with apt; otherwise names what is
# missing and fails, because the tests that drive them never skip.
set -euo pipefail

declare -A package_of=(
    [chromium]=chromium
    [promtool]=prometheus
    [systemd-analyze]=systemd
    [pebble]=pebble
    [softhsm2-util]=softhsm2
    [haproxy]=haproxy
    [ip]=iproute2
    [curl]=curl
    [mosquitto]=mosquitto
    [mosquitto_pub]=mosquitto-clients
    [tinyproxy]=tinyproxy
    [rauc]=rauc
    [mksquashfs]=squashfs-tools
    [dbus-daemon]=dbus-daemon
    [swupdate]=swupdate
    [cpio]=cpio
    [cc]=gcc
    [swtpm]=swtpm
    [swtpm_setup]=swtpm-tools
    [tpm2-abrmd]=tpm2-abrmd
    [faketime]=faketime
)
# Packages known by a file rather than a command (a shell pattern).
declare -A package_with=(
    [/usr/include/openssl/ssl.h]=libssl-dev
    ['/usr/lib/*/ossl-modules/tpm2.so']=tpm2-openssl
    ['/usr/lib/*/libtss2-tcti-tabrmd.so.0']=libtss2-tcti-tabrmd0
    ['/usr/lib/*/engines-3/pkcs11.so']=libengine-pkcs11-openssl
)
missing=()
for tool in "${!package_of[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("${package_of[$tool]}")
done
for pattern in "${!package_with[@]}"; do
    compgen -G "$pattern" >/dev/null || missing+=("${package_with[$pattern]}")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing system tools for the tests: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
        || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
    # Debian's prometheus package starts a server; the tests only need promtool.
    if command -v systemctl >/dev/null 2>&1; then systemctl disable --now prometheus >/dev/null 2>&1 || true; fi
    pkill -x prometheus >/dev/null 2>&1 || true
    # Likewise tinyproxy's package starts a proxy; the tests start their own.
    if command -v systemctl >/dev/null 2>&1; then systemctl disable --now tinyproxy >/dev/null 2>&1 || true; fi
    pkill -x tinyproxy >/dev/null 2>&1 || true
else
    echo "error: the tests need ${missing[*]}: run this script as root, or: sudo apt-get install ${missing[*]}" >&2
    exit 1
fi
