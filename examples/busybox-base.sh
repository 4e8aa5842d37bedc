#!/bin/sh
# Builds `habitus-examples/busybox`, a tiny base image made FROM scratch
# with the host's static busybox (Debian: apt-get install busybox-static),
# for machines that cannot pull `busybox` from a registry. Use it with
#   habitus -d examples/diamond --build BASE_IMAGE=habitus-examples/busybox
set -eu
busybox=${BUSYBOX:-/bin/busybox}
[ -x "$busybox" ] || { echo "no static busybox at $busybox (apt-get install busybox-static)" >&2; exit 1; }
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$busybox" "$ctx/busybox"
cat > "$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox --install -s /bin && mkdir -p -m 1777 /tmp"]
DOCKERFILE
docker build -q -t habitus-examples/busybox "$ctx"
