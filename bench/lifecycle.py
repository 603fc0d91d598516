#!/usr/bin/env python3
"""Lifecycle benchmarks, in one run, as medians with ratios against a cold create:

1. cold:     `cubbi session create --no-connect` (returns once sshd accepts the key);
2. start:    `cubbi session start` of a stopped session (same port, same pinned key,
             returns once sshd proves it);
3. fork:     `cubbi session fork` (a snapshot of a running session, frozen for the commit,
             then a create from it) to key accepted;
4. snapshot: `cubbi session snapshot` of a session whose inner Docker holds a 500 MB image
             (random bytes, so nothing compresses), running (frozen) and stopped, with the
             snapshot's size as Docker reports it.

Needs: root, a cubbi binary (default target/release/cubbi), docker, cubbi-base built on the
endpoint.

    bench/lifecycle.py --endpoint unix:///path/docker.sock [--runtime runc] [-n 5]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

OWNER = f"bench-lifecycle-{os.getpid()}"


class Cubbi:
    def __init__(self, binary, endpoint, runtime):
        self.binary = binary
        self.home = tempfile.mkdtemp(prefix="cubbi-bench-home-")
        self.env = dict(os.environ, HOME=self.home, CUBBI_DOCKER_HOST=endpoint,
                        CUBBI_OWNER=OWNER, XDG_CONFIG_HOME=f"{self.home}/.config",
                        XDG_DATA_HOME=f"{self.home}/.local/share")
        self.runtime = ["--runtime", runtime] + (["--unsafe-runc"] if runtime == "runc" else [])

    def __call__(self, *args, check=True):
        result = subprocess.run([self.binary, *args], env=self.env, capture_output=True,
                                text=True)
        if check and result.returncode != 0:
            sys.exit(f"cubbi {' '.join(args)} failed:\n{result.stderr}")
        return result.stdout

    def timed(self, *args):
        started = time.perf_counter()
        self(*args)
        return time.perf_counter() - started

    def create_args(self, name):
        return ["session", "create", "--image", "base", "--no-connect", "--no-mount",
                "--name", name, *self.runtime]


def median_ms(samples):
    return statistics.median(samples) * 1000


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--cubbi", default="target/release/cubbi")
    parser.add_argument("--runtime", default="sysbox-runc")
    parser.add_argument("-n", type=int, default=5)
    parser.add_argument("--inner-mb", type=int, default=500)
    args = parser.parse_args()
    cubbi = Cubbi(os.path.abspath(args.cubbi), args.endpoint, args.runtime)
    made = []
    try:
        cold, start, fork = [], [], []
        for i in range(args.n):
            name = f"bl-cold-{i}"
            cold.append(cubbi.timed(*cubbi.create_args(name)))
            made.append(name)
        cubbi("session", "close", *made)
        made.clear()

        source = "bl-source"
        cubbi(*cubbi.create_args(source))
        made.append(source)
        for _ in range(args.n):
            cubbi("session", "stop", source)
            start.append(cubbi.timed("session", "start", source))
        for i in range(args.n):
            name = f"bl-fork-{i}"
            fork.append(cubbi.timed("session", "fork", source, "--no-connect", "--no-mount",
                                    "--name", name, *cubbi.runtime))
            cubbi("session", "close", name)
            cubbi("snapshot", "rm", name, check=False)

        # A 500 MB inner image of random bytes, imported into the session's own dockerd.
        script = (f"head -c {args.inner_mb}M /dev/urandom > /tmp/big && "
                  "tar -C /tmp -c big | docker import - bench-big:1 >/dev/null && rm /tmp/big && "
                  "docker image ls bench-big:1 --format '{{.Size}}'")
        inner = cubbi("session", "exec", source, "--", "sh", "-c", script).strip()
        frozen_secs = cubbi.timed("session", "snapshot", source, "--name", "bl-frozen")
        frozen = json.loads(cubbi("--json", "snapshot", "show", "bl-frozen"))
        cubbi("session", "stop", source)
        stopped_secs = cubbi.timed("session", "snapshot", source, "--name", "bl-stopped")
        stopped = json.loads(cubbi("--json", "snapshot", "show", "bl-stopped"))

        base_size = int(subprocess.run(
            ["docker", "-H", args.endpoint, "image", "inspect", "cubbi-base", "--format",
             "{{.Size}}"], check=True, capture_output=True, text=True).stdout.strip())
        base = median_ms(cold)
        print(f"runtime {args.runtime}, n={args.n}, medians:")
        print(f"  cold create to key accepted   {base:8.0f} ms")
        print(f"  start of a stopped session    {median_ms(start):8.0f} ms   "
              f"{median_ms(start) / base:.2f}x cold")
        print(f"  fork (snapshot + create)      {median_ms(fork):8.0f} ms   "
              f"{median_ms(fork) / base:.2f}x cold")
        print(f"snapshot with a {args.inner_mb} MB inner image (inner docker says {inner}), once each:")
        for label, secs, snap in [("running (frozen for commit)", frozen_secs, frozen),
                                  ("stopped", stopped_secs, stopped)]:
            print(f"  {label:<29} {secs * 1000:8.0f} ms   {snap['size'] / 1e6:.0f} MB in all, "
                  f"{(snap['size'] - base_size) / 1e6:.0f} MB over cubbi-base")
        if args.runtime == "runc":
            print("  (under runc the inner Docker's storage is a volume, which no commit holds)")
    finally:
        if made:
            cubbi("session", "close", *made, check=False)
        cubbi("snapshot", "rm", "bl-frozen", "bl-stopped", check=False)
        shutil.rmtree(cubbi.home, ignore_errors=True)


if __name__ == "__main__":
    main()
