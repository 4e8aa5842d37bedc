#!/usr/bin/env python3
"""Prints a listing of an image's merged filesystem, read with `docker
export` of a created (never started) container: path, type, mode, owner,
size, link target, SHA-256 of the content and, for non-directories, mtime.
Two images have equal filesystems when their listings are equal."""
import hashlib, subprocess, sys, tarfile

# What the daemon adds to every container: same in every export, but with
# the container's creation time.
DAEMON_PATHS = {".dockerenv", "etc/hosts", "etc/hostname", "etc/resolv.conf",
                "etc/mtab", "dev/console"}

image = sys.argv[1]
cid = subprocess.run(["docker", "create", image, "/listing"], check=True,
                     capture_output=True, text=True).stdout.strip()
try:
    proc = subprocess.Popen(["docker", "export", cid], stdout=subprocess.PIPE)
    rows = []
    with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
        for m in tar:
            digest = ""
            if m.isreg():
                h = hashlib.sha256()
                f = tar.extractfile(m)
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
                digest = h.hexdigest()
            name = m.name.rstrip("/")
            mtime = "" if m.isdir() or name in DAEMON_PATHS else str(int(m.mtime))
            rows.append(f"{m.name.rstrip('/')} {m.type!r} {m.mode:o} {m.uid}:{m.gid} "
                        f"{m.size} {m.linkname} {digest} {mtime}")
    proc.wait()
finally:
    subprocess.run(["docker", "rm", "-f", cid], capture_output=True)
for row in sorted(rows):
    print(row)
