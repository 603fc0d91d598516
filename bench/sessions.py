#!/usr/bin/env python3
"""Session benchmarks: prints medians and ratios against baselines measured in the same run,
under one runtime (--runtime sysbox-runc, the default, or runc).

1. create-to-ready: `cubbi session create --no-connect` (returns once sshd accepts the key),
   with cubbi's own step timings read from its log, against
   - raw: the same cubbi-base image with the settings cubbi gave its own (warm-up) container,
     read back from `docker inspect` (runtime, capabilities, seccomp, cgroupns, volumes, data
     volume, network, restart policy, CPU limit): API create + put keys + start, then polling
     OpenSSH until a key login succeeds; its phases are timed (create, archive, start, login);
   - bare: the same, with only the runtime's settings (default bridge, no data volume, no
     limits, no restart policy): what cubbi's extra mounts and network cost;
   - stock: a stock Debian image with systemd and sshd (built here from debian:bookworm with
     apt-get install systemd systemd-sysv openssh-server, CMD /sbin/init), keys put in the
     same way, the same OpenSSH poll: what anybody would do;
   - floor: `docker run --rm --runtime R debian:bookworm true`, end to end.
   Then `systemd-analyze` (as root, via docker exec) inside one session of each image.
2. `cubbi session list` with N sessions vs `docker ps` on the same endpoint, and the CLI's
   peak RSS (skipped with --list-sessions 0).

Under sysbox-runc nothing is added (no capabilities, seccomp or cgroupns changes, no
/var/lib/docker volume); under runc cubbi runs with --unsafe-runc and the baselines get what
cubbi's unsafe mode gives its containers.

Needs: a cubbi binary (default target/release/cubbi), the docker and ssh clients, cubbi-base
built on the endpoint, debian:bookworm there (for the stock image and the floor; the stock
image is built on first use, with network access to the Debian mirror).

    bench/sessions.py --endpoint unix:///path/docker.sock [--runtime runc] [-n 10] [--list-sessions 50]
"""
import argparse
import http.client
import io
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tarfile
import shutil
import tempfile
import time

OWNER = f"bench-{os.getpid()}"
STOCK_IMAGE = "cubbi-bench-stock:bookworm"
STOCK_DOCKERFILE = """\
FROM debian:bookworm
ENV DEBIAN_FRONTEND=noninteractive container=docker
RUN apt-get update && apt-get install -y systemd systemd-sysv openssh-server \\
 && rm -rf /var/lib/apt/lists/*
RUN useradd -m -s /bin/bash agent
STOPSIGNAL SIGRTMIN+3
CMD ["/sbin/init"]
"""
# cubbi's create steps as its log names them (CreateStep's Display), in order.
STEPS = [
    ("validating", "validate (info, image, name)"),
    ("preparing SSH keys", "host key"),
    ("allocating the SSH port", "port lock + pick"),
    ("creating the container", "API create"),
    ("copying keys and environment in", "archive put"),
    ("starting the container", "API start"),
    ("waiting for sshd to accept the key", "start returned -> key accepted"),
]


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


def run(cmd, env=None, check=True, input=None):
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, input=input)
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


def ssh_command(tmp, port, known):
    return ["ssh", "-q", "-p", str(port), "-i", os.path.join(tmp, "client"), "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known}", "-o", "ConnectTimeout=2",
            "agent@127.0.0.1", "true"]


def cubbi_settings(sock, container):
    """The create body's settings cubbi gave one of its containers, read back from Docker."""
    inspect = api(sock, "GET", f"/containers/{container}/json")
    host = inspect["HostConfig"]
    keep = ["Binds", "NetworkMode", "RestartPolicy", "Runtime", "Memory", "NanoCpus", "CapAdd",
            "SecurityOpt", "CgroupnsMode", "Privileged"]
    return {
        "Volumes": inspect["Config"].get("Volumes") or {},
        "HostConfig": {key: host[key] for key in keep if host.get(key) is not None},
    }


def runtime_only(settings):
    """Only what the runtime needs from cubbi's settings: no data volume, network or limits."""
    host = {key: value for key, value in settings["HostConfig"].items()
            if key in ("Runtime", "CapAdd", "SecurityOpt", "CgroupnsMode", "Privileged")}
    return {"Volumes": settings["Volumes"], "HostConfig": host}


def baseline_create(sock, tmp, port, label, index, image, settings, keep=False):
    """Create + keys + start + OpenSSH poll; returns (total, phases) and the container id if kept."""
    archive, host_key = keys_archive(tmp)
    known = os.path.join(tmp, f"known-{label}-{index}")
    with open(known, "w") as f:
        f.write(f"[127.0.0.1]:{port} {host_key}\n")
    host = dict(settings["HostConfig"])
    host["PortBindings"] = {"22/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}
    body = {
        "Image": image,
        "Hostname": f"{label}{index}",
        "Labels": {"io.cubbi.bench": OWNER},
        "ExposedPorts": {"22/tcp": {}},
        "Volumes": settings["Volumes"],
        "HostConfig": host,
    }
    ssh = ssh_command(tmp, port, known)
    start = time.perf_counter()
    cid = api(sock, "POST", f"/containers/create?name=bench-{label}-{OWNER}-{index}", body)["Id"]
    created = time.perf_counter()
    api(sock, "PUT", f"/containers/{cid}/archive?path=/", archive, "application/x-tar")
    uploaded = time.perf_counter()
    try:
        api(sock, "POST", f"/containers/{cid}/start", b"")
    except RuntimeError:
        api(sock, "DELETE", f"/containers/{cid}?force=true&v=true")
        raise
    started = time.perf_counter()
    attempts = 0
    while True:
        attempts += 1
        if subprocess.run(ssh, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0:
            break
        if time.perf_counter() - start > 90:
            raise RuntimeError(f"{label} baseline never became ready: "
                               + run(["docker", "-H", "unix://" + sock, "logs", "--tail", "20", cid], check=False).stderr)
        time.sleep(0.01)
    ready = time.perf_counter()
    phases = {"API create": created - start, "archive put": uploaded - created,
              "API start": started - uploaded, "start returned -> key login": ready - started,
              "login attempts": attempts}
    if keep:
        return ready - start, phases, (cid, ssh)
    api(sock, "DELETE", f"/containers/{cid}?force=true&v=true")
    return ready - start, phases, None


def cubbi_create(command, env):
    """Wall time of one create and its steps from cubbi's own log (uptime-stamped)."""
    start = time.perf_counter()
    result = run(command, env)
    total = time.perf_counter() - start
    stamps, attempts = {}, None
    for line in re.sub(r"\x1b\[[0-9;]*m", "", result.stderr).splitlines():
        match = re.match(r"\s*([0-9.]+)s\s+\w+\s+\S+:\s+(.*)$", line)
        if not match:
            continue
        at, message = float(match.group(1)), match.group(2).strip()
        if message.startswith("sshd accepted the key"):
            stamps["accepted"] = at
            found = re.search(r"attempts=(\d+)", message)
            attempts = int(found.group(1)) if found else None
        elif message in dict(STEPS):
            stamps.setdefault(message, at)
    phases = {}
    order = [step for step, _ in STEPS if step in stamps] + (["accepted"] if "accepted" in stamps else [])
    names = dict(STEPS)
    for here, after in zip(order, order[1:]):
        phases[names[here]] = stamps[after] - stamps[here]
    if order:
        phases["CLI start/exit, rename, ssh config"] = total - (stamps[order[-1]] - stamps[order[0]])
    if attempts is not None:
        phases["login attempts"] = attempts
    return total, phases


RETRIES = []


def retrying(label, sample):
    """One sample, taken again when a port mapping failed because something else on the host
    rewrote Docker's shared iptables chains meanwhile (another dockerd starting or stopping):
    noise from the environment, not the thing measured. Retries are counted and printed."""
    for attempt in range(3):
        try:
            return sample()
        except RuntimeError as err:
            if "iptables" not in str(err) or attempt == 2:
                raise
            RETRIES.append(label)
            time.sleep(1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ms(value):
    return f"{value * 1000:.0f}"


def summary(label, values):
    return (f"{label}: median {ms(statistics.median(values))} ms "
            f"(min {ms(min(values))}, max {ms(max(values))}, n={len(values)})")


def phase_table(title, runs):
    """Median of each phase over the runs (phases in first-seen order)."""
    print(title)
    names = []
    for phases in runs:
        names += [name for name in phases if name not in names]
    for name in names:
        values = [phases[name] for phases in runs if name in phases]
        if name == "login attempts":
            print(f"  {name:<40} median {statistics.median(values):.0f}")
        else:
            print(f"  {name:<40} median {ms(statistics.median(values)):>6} ms (min {ms(min(values))}, max {ms(max(values))})")


def systemd_analyze(endpoint, container):
    """`systemd-analyze` and the slowest units, as root inside a running container."""
    docker = ["docker", "-H", endpoint, "exec", container]
    deadline = time.perf_counter() + 60
    while True:
        result = run(docker + ["systemd-analyze"], check=False)
        if result.returncode == 0 or time.perf_counter() > deadline:
            break
        time.sleep(0.5)  # "Bootup is not yet finished" until the default target is reached
    lines = [" ".join((result.stdout or result.stderr).split())]
    blame = run(docker + ["systemd-analyze", "blame", "--no-pager"], check=False).stdout.splitlines()[:8]
    lines += ["  blame: " + ", ".join(" ".join(line.split()) for line in blame)]
    chain = run(docker + ["systemd-analyze", "critical-chain", "--no-pager", "ssh.service"], check=False).stdout
    lines += ["  critical-chain ssh.service:"] + ["    " + line.strip() for line in chain.splitlines()[2:] if line.strip()]
    return "\n".join(lines)


def ensure_stock_image(endpoint):
    if run(["docker", "-H", endpoint, "image", "inspect", STOCK_IMAGE], check=False).returncode == 0:
        return
    print(f"building {STOCK_IMAGE} (once per endpoint)...", file=sys.stderr)
    env = dict(os.environ, DOCKER_BUILDKIT="0")
    result = subprocess.run(["docker", "-H", endpoint, "build", "-q", "-t", STOCK_IMAGE, "-"],
                            input=STOCK_DOCKERFILE, text=True, capture_output=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"building {STOCK_IMAGE}: {result.stderr.strip()[-2000:]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", default=os.environ.get("CUBBI_DOCKER_HOST", "unix:///var/run/cubbi-docker.sock"))
    parser.add_argument("--cubbi", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "cubbi"))
    parser.add_argument("--runtime", choices=["sysbox-runc", "runc"], default="sysbox-runc")
    parser.add_argument("-n", type=int, default=10)
    parser.add_argument("--list-sessions", type=int, default=50, help="0 skips the list benchmark")
    args = parser.parse_args()
    with open("/proc/sys/fs/inotify/max_user_instances") as f:
        if int(f.read()) < 1024:
            sys.exit("fs.inotify.max_user_instances is below 1024: dozens of sessions cannot boot "
                     "(see `cubbi doctor`); raise it with `sysctl -w fs.inotify.max_user_instances=8192`")
    sock = args.endpoint.removeprefix("unix://")
    tmp = tempfile.mkdtemp(prefix="cubbi-bench-")
    env = dict(os.environ, HOME=tmp, XDG_CONFIG_HOME=os.path.join(tmp, ".config"),
               CUBBI_DOCKER_HOST=args.endpoint, CUBBI_OWNER=OWNER)
    # cubbi's steps, uptime-stamped on stderr (a handful of lines per create).
    timed_env = dict(env, RUST_LOG="warn,cubbi=debug")
    env.pop("RUST_LOG", None)
    cubbi = [os.path.abspath(args.cubbi)]
    runtime = ["--runtime", args.runtime] + (["--unsafe-runc"] if args.runtime == "runc" else [])
    create = cubbi + ["session", "create", "--image", "base", "--no-connect"] + runtime
    docker = ["docker", "-H", args.endpoint]
    print(f"runtime {args.runtime}, n={args.n}, endpoint {args.endpoint}, "
          f"load average at start {open('/proc/loadavg').read().split()[0]}")
    try:
        ensure_stock_image(args.endpoint)
        # The cubbi client key doubles as the baselines' key; the warm-up session's container
        # gives the settings the raw baseline copies.
        run(cubbi + ["session", "list"], env)
        retrying("warm-up", lambda: run(create + ["--name", "warmup"], env))
        settings = cubbi_settings(sock, "cubbi-warmup")
        run(cubbi + ["session", "close", "warmup"], env)
        os.symlink(os.path.join(tmp, ".config", "cubbi", "id_cubbi"), os.path.join(tmp, "client"))
        os.symlink(os.path.join(tmp, ".config", "cubbi", "id_cubbi.pub"), os.path.join(tmp, "client.pub"))
        bare = runtime_only(settings)
        stock = runtime_only(settings)
        stock["Volumes"] = {}  # no inner dockerd in the stock image
        print(f"raw baseline settings (from cubbi's container): {json.dumps(settings, sort_keys=True)}")
        floor_cmd = docker + ["run", "--rm", "--runtime", args.runtime, "debian:bookworm", "true"]
        run(floor_cmd)
        # One untimed boot of each baseline image, so first-use costs fall on no sample.
        retrying("warm-up", lambda: baseline_create(sock, tmp, free_port(), "warm-raw", 0, "cubbi-base", settings))
        retrying("warm-up", lambda: baseline_create(sock, tmp, free_port(), "warm-stock", 0, STOCK_IMAGE, stock))

        ours, raw, bares, stocks, floor = [], [], [], [], []
        ours_phases, raw_phases, bare_phases, stock_phases = [], [], [], []
        for i in range(args.n):  # interleaved, so drift in host load touches all alike
            elapsed, phases = retrying("cubbi", lambda: cubbi_create(create + ["--name", f"c{i}"], timed_env))
            ours.append(elapsed)
            ours_phases.append(phases)
            run(cubbi + ["session", "close", f"c{i}"], env)
            for label, image, config, totals, phase_list in (
                    ("raw", "cubbi-base", settings, raw, raw_phases),
                    ("bare", "cubbi-base", bare, bares, bare_phases),
                    ("stock", STOCK_IMAGE, stock, stocks, stock_phases)):
                elapsed, phases, _ = retrying(label, lambda: baseline_create(
                    sock, tmp, free_port(), label, i, image, config))
                totals.append(elapsed)
                phase_list.append(phases)
            start = time.perf_counter()
            run(floor_cmd)
            floor.append(time.perf_counter() - start)

        print(summary("cubbi session create --no-connect (to key login ready)", ours))
        print(summary("raw: cubbi-base, cubbi's settings, API create+archive+start, OpenSSH key login", raw))
        print(summary("bare: cubbi-base, runtime settings only (no data volume/network/limits)", bares))
        print(summary("stock: Debian systemd+openssh-server, CMD /sbin/init, same steps", stocks))
        print(summary(f"floor: docker run --rm --runtime {args.runtime} debian:bookworm true", floor))
        median = statistics.median
        if RETRIES:
            print(f"samples retried after a port-mapping (iptables) failure: {', '.join(RETRIES)}")
        print(f"ratios (medians): cubbi/raw {median(ours) / median(raw):.2f}, "
              f"cubbi/bare {median(ours) / median(bares):.2f}, "
              f"cubbi/stock {median(ours) / median(stocks):.2f}, "
              f"cubbi/floor {median(ours) / median(floor):.2f}")
        phase_table("phases, cubbi session create (cubbi's log):", ours_phases)
        phase_table("phases, raw (cubbi-base, cubbi's settings):", raw_phases)
        phase_table("phases, bare (cubbi-base, runtime settings only):", bare_phases)
        phase_table("phases, stock (Debian systemd+sshd):", stock_phases)

        # Inside one booted session of each image; then what one OpenSSH login costs once up.
        retrying("analyze", lambda: run(create + ["--name", "analyze"], env))
        print("systemd-analyze in a cubbi session (as root):\n  " + systemd_analyze(args.endpoint, "cubbi-analyze"))
        _, _, (stock_id, stock_ssh) = retrying("analyze", lambda: baseline_create(
            sock, tmp, free_port(), "analyze", 0, STOCK_IMAGE, stock, keep=True))
        print("systemd-analyze in the stock container (as root):\n  " + systemd_analyze(args.endpoint, stock_id))
        logins = []
        for _ in range(5):
            start = time.perf_counter()
            run(stock_ssh)
            logins.append(time.perf_counter() - start)
        print(summary("one OpenSSH key login + `true` into a booted stock container", logins))
        run(cubbi + ["session", "close", "analyze"], env)

        if args.list_sessions > 0:
            for i in range(args.list_sessions):
                run(create + ["--name", f"l{i}"], env)
            list_times, rss, ps_times = [], [], []
            ps = docker + ["ps", "-a", "--filter", f"label=io.cubbi.owner={OWNER}"]
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
        ids = run(docker + ["ps", "-aq", "--filter", f"label=io.cubbi.bench={OWNER}"], check=False).stdout.split()
        if ids:
            run(docker + ["rm", "-fv", *ids], check=False)
        # The per-owner data volume outlives sessions by design; the bench's owner is gone.
        run(docker + ["volume", "rm", f"cubbi-data-{OWNER}"], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
