#!/bin/bash
# Profile one unlade unpack (blobs already in the store, page cache dropped) three ways:
# py-spy (Python stacks per thread), strace -c (syscall counts), perf (CPU per library).
#
#   benchmarks/profile.sh REF [OUT]
#
# REF is an image in a plain-HTTP registry on this machine (for example the benchmark
# image: `unlade bench run` prints its reference). The store and the rootfs go to a tmpfs
# mounted on OUT/work; the reports go to OUT (default: profile-out). Needs root, py-spy
# (pip install py-spy), strace and perf (Debian: strace linux-perf). Set PYTHONPATH to
# profile another checkout's src/ with the same interpreter.
set -euo pipefail
REF=${1:?usage: profile.sh REF [OUT]}
OUT=${2:-profile-out}
PY=${PYTHON:-python3}
mkdir -p "$OUT/work"
mountpoint -q "$OUT/work" || mount -t tmpfs -o size=8g tmpfs "$OUT/work"
trap 'umount "$OUT/work"' EXIT
STORE=$OUT/work/store
ROOTFS=$OUT/work/rootfs
unlade() { "$@" -m unlade --root "$STORE" pull --plain-http -q "$REF" --rootfs "$ROOTFS"; }
fresh() { rm -rf "$ROOTFS"; sync; echo 3 > /proc/sys/vm/drop_caches; }

"$PY" -m unlade --root "$STORE" pull --plain-http -q --no-unpack "$REF"

fresh; /usr/bin/time -f "%e s wall, %U s user, %S s sys, %M KiB peak RSS" -o "$OUT/time.txt" \
    "$PY" -m unlade --root "$STORE" pull --plain-http -q "$REF" --rootfs "$ROOTFS"
fresh; py-spy record -r 200 --threads -f raw -o "$OUT/py-spy.txt" -- \
    "$PY" -m unlade --root "$STORE" pull --plain-http -q "$REF" --rootfs "$ROOTFS" >/dev/null
fresh; strace -f -c -o "$OUT/strace.txt" \
    "$PY" -m unlade --root "$STORE" pull --plain-http -q "$REF" --rootfs "$ROOTFS"
fresh; perf record -q -F 499 -o "$OUT/perf.data" -- \
    "$PY" -m unlade --root "$STORE" pull --plain-http -q "$REF" --rootfs "$ROOTFS" 2>/dev/null
perf report -i "$OUT/perf.data" --sort dso -n --stdio 2>/dev/null > "$OUT/perf-dso.txt"
perf report -i "$OUT/perf.data" --sort sym -n --stdio 2>/dev/null > "$OUT/perf-sym.txt"

"$PY" - "$OUT" <<'EOF'
import collections, sys
out = sys.argv[1]
threads, leaves = collections.Counter(), collections.Counter()
for line in open(f"{out}/py-spy.txt"):
    stack, n = line.rsplit(" ", 1)
    frames = stack.split(";")
    thread = frames[0].split(":")[-1].strip() or frames[0]
    threads[thread] += int(n)
    leaves[frames[-1]] += int(n)
total = sum(threads.values())
print("py-spy samples (200 Hz) by thread:", dict(threads))
for frame, n in leaves.most_common(12):
    print(f"  {100 * n / total:5.1f}%  {frame}")
print(open(f"{out}/time.txt").read().strip())
print("\n".join(open(f"{out}/strace.txt").read().splitlines()[:14]))
print("".join(l for l in open(f"{out}/perf-dso.txt") if l.strip() and l[0] != "#"))
EOF
