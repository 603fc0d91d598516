#!/usr/bin/env python3
"""Session benchmarks: prints medians and ratios against raw baselines measured in the same run.

1. create-to-ready: `cubbi session create --no-connect` (returns once sshd accepts the key)
   vs the raw baseline: create + put keys + start of the same image with the same settings
   through the Docker API, then polling OpenSSH until a key login succeeds.
2. `cubbi session list` with N sessions vs `docker ps` on the same endpoint, and the CLI's
   peak RSS.

Needs: a cubbi binary (default target/release/cubbi), the docker and ssh clients, cubbi-base
built on the endpoint. Runs sessions in the explicit unsafe runc mode (no Sysbox here).

    bench/sessions.py --endpoint unix:///path/docker.sock [-n 10] [--list-sessions 50]
"""
import argparse
import http.client
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tarfile
import shutil
import tempfile
import time

OWNER = f"bench-{os.getpid()}"


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost")
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def api(sock, method, url, body=None, content_type="application/json"):
    conn = UnixHTTP(sock)
    headers = {"Content-Type": content_type} if body is not None else {}
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    conn.request(method, "/v1.41" + url, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    if response.status >= 300:
        raise RuntimeError(f"{method} {url}: {response.status} {data[:300]!r}")
    return json.loads(data) if data else None


def run(cmd, env=None, check=True):
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"{cmd}: {result.stderr.strip()}")
    return result


def timed_rss(cmd, env):
    """Wall time and peak RSS (KiB) of one child process."""
    start = time.perf_counter()
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd} failed")
    return elapsed, usage.ru_maxrss


def keys_archive(tmp):
    """A tar with a fresh host key and the client key authorized, as cubbi uploads them."""
    host = os.path.join(tmp, f"host-{time.monotonic_ns()}")
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", host])
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        def add(name, data, mode, uid=0, gid=0, kind=tarfile.REGTYPE):
            info = tarfile.TarInfo(name)
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            info.mode, info.uid, info.gid, info.type = mode, uid, gid, kind
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
        add("etc/ssh/ssh_host_ed25519_key", open(host, "rb").read(), 0o600)
        add("etc/ssh/ssh_host_ed25519_key.pub", open(host + ".pub", "rb").read(), 0o644)
        add("home/agent/.ssh", b"", 0o700, 1000, 1000, tarfile.DIRTYPE)
        add("home/agent/.ssh/authorized_keys", open(os.path.join(tmp, "client.pub"), "rb").read(), 0o600, 1000, 1000)
    public = open(host + ".pub").read().split()
    return buffer.getvalue(), f"{public[0]} {public[1]}"


def baseline_create(sock, tmp, port, index):
    archive, host_key = keys_archive(tmp)
    known = os.path.join(tmp, f"known-{index}")
    with open(known, "w") as f:
        f.write(f"[127.0.0.1]:{port} {host_key}\n")
    body = {
        "Image": "cubbi-base",
        "Hostname": f"base{index}",
        "Labels": {"io.cubbi.bench": OWNER},
        "ExposedPorts": {"22/tcp": {}},
        "Volumes": {"/var/lib/docker": {}},
        "HostConfig": {
            "PortBindings": {"22/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]},
            "CapAdd": ["SYS_ADMIN", "NET_ADMIN"],
            "SecurityOpt": ["seccomp=unconfined", "apparmor=unconfined"],
            "CgroupnsMode": "private",
            "Runtime": "runc",
        },
    }
    start = time.perf_counter()
    created = api(sock, "POST", f"/containers/create?name=bench-base-{OWNER}-{index}", body)
    cid = created["Id"]
    api(sock, "PUT", f"/containers/{cid}/archive?path=/", archive, "application/x-tar")
    api(sock, "POST", f"/containers/{cid}/start", b"")
    ssh = ["ssh", "-q", "-p", str(port), "-i", os.path.join(tmp, "client"), "-o", "BatchMode=yes",
           "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known}", "-o", "ConnectTimeout=2",
           "agent@127.0.0.1", "true"]
    while subprocess.run(ssh, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode != 0:
        if time.perf_counter() - start > 60:
            raise RuntimeError("baseline never became ready")
        time.sleep(0.01)
    elapsed = time.perf_counter() - start
    api(sock, "DELETE", f"/containers/{cid}?force=true&v=true")
    return elapsed


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def summary(label, values):
    return f"{label}: median {statistics.median(values) * 1000:.0f} ms (min {min(values) * 1000:.0f}, max {max(values) * 1000:.0f}, n={len(values)})"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", default=os.environ.get("CUBBI_DOCKER_HOST", "unix:///var/run/cubbi-docker.sock"))
    parser.add_argument("--cubbi", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "cubbi"))
    parser.add_argument("-n", type=int, default=10)
    parser.add_argument("--list-sessions", type=int, default=50)
    args = parser.parse_args()
    with open("/proc/sys/fs/inotify/max_user_instances") as f:
        if int(f.read()) < 1024:
            sys.exit("fs.inotify.max_user_instances is below 1024: dozens of runc sessions cannot boot "
                     "(see `cubbi doctor`); raise it with `sysctl -w fs.inotify.max_user_instances=8192`")
    sock = args.endpoint.removeprefix("unix://")
    tmp = tempfile.mkdtemp(prefix="cubbi-bench-")
    env = dict(os.environ, HOME=tmp, XDG_CONFIG_HOME=os.path.join(tmp, ".config"),
               CUBBI_DOCKER_HOST=args.endpoint, CUBBI_OWNER=OWNER)
    env.pop("RUST_LOG", None)
    cubbi = [os.path.abspath(args.cubbi)]
    create = cubbi + ["session", "create", "--image", "base", "--no-connect", "--runtime", "runc", "--unsafe-runc"]
    try:
        # The cubbi client key doubles as the baseline's key.
        run(cubbi + ["session", "list"], env)
        run(cubbi + ["session", "create", "--image", "base", "--no-connect", "--runtime", "runc", "--unsafe-runc", "--name", "warmup"], env)
        run(cubbi + ["session", "close", "warmup"], env)
        os.symlink(os.path.join(tmp, ".config", "cubbi", "id_cubbi"), os.path.join(tmp, "client"))
        os.symlink(os.path.join(tmp, ".config", "cubbi", "id_cubbi.pub"), os.path.join(tmp, "client.pub"))

        ours, raw = [], []
        for i in range(args.n):
            start = time.perf_counter()
            run(create + ["--name", f"c{i}"], env)
            ours.append(time.perf_counter() - start)
            run(cubbi + ["session", "close", f"c{i}"], env)
            raw.append(baseline_create(sock, tmp, free_port(), i))
        print(summary("cubbi session create --no-connect (to key login ready)", ours))
        print(summary("raw baseline: API create+archive+start, then OpenSSH key login", raw))
        print(f"create ratio cubbi/raw (medians): {statistics.median(ours) / statistics.median(raw):.2f}")

        for i in range(args.list_sessions):
            run(create + ["--name", f"l{i}"], env)
        list_times, rss, ps_times = [], [], []
        ps = ["docker", "-H", args.endpoint, "ps", "-a", "--filter", f"label=io.cubbi.owner={OWNER}"]
        for _ in range(args.n):
            elapsed, peak = timed_rss(cubbi + ["session", "list"], env)
            list_times.append(elapsed)
            rss.append(peak)
            ps_times.append(timed_rss(ps, env)[0])
        print(summary(f"cubbi session list ({args.list_sessions} sessions)", list_times))
        print(summary(f"docker ps ({args.list_sessions} sessions)", ps_times))
        print(f"list ratio cubbi/docker ps (medians): {statistics.median(list_times) / statistics.median(ps_times):.2f}")
        print(f"cubbi session list peak RSS: median {statistics.median(rss) / 1024:.1f} MiB")
    finally:
        subprocess.run(cubbi + ["session", "close", "--all"], env=env, capture_output=True)
        ids = run(["docker", "-H", args.endpoint, "ps", "-aq", "--filter", f"label=io.cubbi.bench={OWNER}"], check=False).stdout.split()
        if ids:
            run(["docker", "-H", args.endpoint, "rm", "-fv", *ids], check=False)
        # The per-owner data volume outlives sessions by design; the bench's owner is gone.
        run(["docker", "-H", args.endpoint, "volume", "rm", f"cubbi-data-{OWNER}"], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
