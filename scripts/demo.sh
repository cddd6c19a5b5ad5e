#!/usr/bin/env bash
# The demo: a loopback registry, a small sample image built and pushed with real tools,
# and unlade pulling it into a root filesystem.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
unlade="$here/.venv/bin/unlade"
work=$(mktemp -d /tmp/unlade-demo.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cleanup() { [ -n "${reg_pid:-}" ] && kill "$reg_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

cat > "$work/registry.yml" <<YML
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $work/registry}}
http: {addr: 127.0.0.1:$port}
YML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
reg_pid=$!
for _ in $(seq 50); do curl -fs "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break; sleep 0.1; done

echo "== building a sample image (busybox + a few files) with umoci"
mkdir -p "$work/src/bin" "$work/src/etc"
cp /bin/busybox "$work/src/bin/busybox"
for tool in sh ls cat echo; do ln -s busybox "$work/src/bin/$tool"; done
echo "hello from an image pulled by unlade" > "$work/src/etc/motd"
umoci init --layout "$work/layout"
umoci new --image "$work/layout:demo"
umoci insert --image "$work/layout:demo" "$work/src" /
echo "== pushing it to the loopback registry at 127.0.0.1:$port with skopeo"
skopeo copy -q --dest-tls-verify=false "oci:$work/layout:demo" "docker://127.0.0.1:$port/demo/busybox:latest"

echo "== unlade pull"
"$unlade" --root "$work/store" pull --plain-http "127.0.0.1:$port/demo/busybox:latest" --rootfs "$work/rootfs"
echo "== the rootfs"
ls -l "$work/rootfs" "$work/rootfs/bin"
cat "$work/rootfs/etc/motd"
"$work/rootfs/bin/busybox" echo "busybox from the unpacked rootfs runs"
