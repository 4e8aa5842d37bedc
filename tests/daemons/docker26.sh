#!/usr/bin/env bash
# Docker 26.1 with the containerd image store, beside the machine's own daemon.
#
#   tests/daemons/docker26.sh start     fetch (once), start, print DOCKER_HOST=...
#   tests/daemons/docker26.sh stop      stop it and remove its bridge
#   tests/daemons/docker26.sh env       print DOCKER_HOST=... if it answers
#   tests/daemons/docker26.sh test ...  run `cargo test ...` against it
#
# Needs root. Debian trixie's docker.io, containerd and tini are downloaded
# through the machine's own apt source (its first stanza, with the suite set
# to trixie) and unpacked into a private prefix; nothing is installed over the
# system's packages. trixie's runc needs a newer glibc than bookworm's, so the
# system's runc is used instead.
#
# HABITUS_DOCKER26_ROOT, _PREFIX, _BRIDGE and _BRIDGE_ADDR run another
# instance (a test that stops and restarts its own daemon uses them).
set -euo pipefail

root="${HABITUS_DOCKER26_ROOT:-/var/lib/habitus-docker26}"
prefix="${HABITUS_DOCKER26_PREFIX:-$root/prefix}"
sock="$root/run/docker.sock"
bridge="${HABITUS_DOCKER26_BRIDGE:-docker26}"
bridge_addr="${HABITUS_DOCKER26_BRIDGE_ADDR:-172.31.250.1/24}"
log="$root/dockerd.log"

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

host() { printf 'unix://%s' "$sock"; }

answers() { DOCKER_HOST="$(host)" docker info >/dev/null 2>&1; }

fetch() {
    [ -x "$prefix/usr/sbin/dockerd" ] && [ -x "$prefix/usr/bin/containerd" ] && return 0
    [ "$(id -u)" -eq 0 ] || die "fetching Docker 26 needs root"
    local src=/etc/apt/sources.list.d/debian.sources
    [ -r "$src" ] || die "$src is missing: no apt source to take trixie's packages from"
    local apt="$root/apt"
    mkdir -p "$apt/sources" "$apt/lists/partial" "$apt/archives/partial"
    # The first stanza of the machine's source, with its suite set to trixie.
    awk 'BEGIN{s=0} /^[[:space:]]*$/{ if (s) exit; next } { s=1; print }' "$src" \
        | sed -E 's/^Suites:.*/Suites: trixie/' >"$apt/sources/trixie.sources"
    local opts=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$apt/sources"
        -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache::Archives=$apt/archives"
        -o Debug::NoLocking=1)
    say "apt-get update (trixie, private lists)"
    apt-get "${opts[@]}" update -qq
    say "downloading docker.io, containerd and tini from trixie"
    (cd "$apt/archives" && apt-get "${opts[@]}" download docker.io containerd tini)
    rm -rf "$prefix.tmp"
    mkdir -p "$prefix.tmp"
    for deb in "$apt/archives"/*.deb; do
        dpkg-deb -x "$deb" "$prefix.tmp"
    done
    # trixie's runc needs glibc 2.38; the system's runc is used instead.
    rm -f "$prefix.tmp/usr/sbin/runc" "$prefix.tmp/usr/bin/runc"
    rm -rf "$prefix"
    mv "$prefix.tmp" "$prefix"
}

start() {
    if answers; then
        echo "DOCKER_HOST=$(host)"
        return 0
    fi
    [ "$(id -u)" -eq 0 ] || die "starting Docker 26 needs root"
    command -v runc >/dev/null || die "runc is missing: apt-get install runc"
    fetch
    if ! ip link show "$bridge" >/dev/null 2>&1; then
        ip link add "$bridge" type bridge
        ip addr add "$bridge_addr" dev "$bridge"
    fi
    ip link set "$bridge" up
    mkdir -p "$root/data" "$root/exec" "$root/run"
    cat >"$root/daemon.json" <<'JSON'
{"features":{"containerd-snapshotter":true}}
JSON
    if [ -f "$root/dockerd.pid" ] && kill -0 "$(cat "$root/dockerd.pid")" 2>/dev/null; then
        say "dockerd (pid $(cat "$root/dockerd.pid")) runs but does not answer yet"
    else
        rm -f "$root/dockerd.pid" "$sock"
        say "starting Docker 26 (log: $log)"
        PATH="$prefix/usr/sbin:$prefix/usr/bin:$PATH" nohup "$prefix/usr/sbin/dockerd" \
            --config-file "$root/daemon.json" -b "$bridge" \
            --data-root "$root/data" --exec-root "$root/exec" \
            -H "$(host)" --pidfile "$root/dockerd.pid" >"$log" 2>&1 &
    fi
    for _ in $(seq 60); do
        answers && break
        sleep 1
    done
    if ! answers; then
        tail -n 20 "$log" >&2 || true
        die "Docker 26 did not answer within 60 s (log: $log)"
    fi
    local driver
    driver="$(DOCKER_HOST="$(host)" docker info --format '{{json .DriverStatus}}')"
    case "$driver" in
        *io.containerd.snapshotter*) ;;
        *) die "Docker 26 runs without the containerd image store: $driver" ;;
    esac
    echo "DOCKER_HOST=$(host)"
}

stop() {
    if [ -f "$root/dockerd.pid" ]; then
        local pid
        pid="$(cat "$root/dockerd.pid")"
        if kill "$pid" 2>/dev/null; then
            for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
        fi
        rm -f "$root/dockerd.pid"
    fi
    ip link del "$bridge" 2>/dev/null || true
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    env) answers && echo "DOCKER_HOST=$(host)" ;;
    test) shift; start >/dev/null; DOCKER_HOST="$(host)" exec cargo test "$@" ;;
    *) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
