#!/usr/bin/env python3
"""Warm-pool benchmark (issue #24), in one run, under one runtime, as medians and p95 with
ratios against the cold create measured in the same run:

1. serial, `base`, n runs each: `cubbi session create --image base --no-connect --no-mount`
   (returns once sshd accepts the session's key) claiming a pool member vs cold. Both paths use
   identical flags and config (`pool.base = 1`); a cold run is made cold by draining the pool
   first. Before each pooled run the pool is filled and `pool status` must say ready == target,
   then --settle seconds pass (default 8: a just-booted member's systemd is still starting
   units after sshd answers; a pool member normally waits idle), as before each cold run;
   the create must say "from the warm pool" (the bench stops otherwise). Its background refill
   is waited for (and the session closed) before the next timed create, so no boot competes with
   a measurement. Figures: the CLI's wall time to its exit, and the "ready in X s" it prints
   (timed from after its pre-flight checks; 0.1 s resolution).
2. concurrent: 20 creates started at once against a pool filled to 20 (every one must claim),
   then the same 20 cold (pool drained): median and p95 of the 20 create times, and the wall
   time for all 20.
   The same k through `cubbi serve` (`POST /v1/sessions`, request to 201): with `[pool]
   base = k` (the service fills it, and refills during the batch), then cold. For every batch,
   the machine's CPU per create (/proc/stat) and how much of it dockerd, containerd, the shims
   (with the runc they reaped) and cubbi (the CLIs, or the service process) used.
3. idle members: with the pool at 20 and booted, per member host memory (the container's
   cgroup: memory.current or memory.usage_in_bytes, and its anonymous part) and the CPU seconds
   it uses over --idle-secs (cgroup cpu.stat usage_usec or cpuacct.usage): medians over members.
4. a tool image (--tool, default claude-code): serial creates as in 1, from a pool of 1 (its
   members hold the bench owner's data volume, where the tool keeps its config) and cold.
   Where the tool image is not built on the endpoint the bench says so and builds a stand-in:
   cubbi-base under the tool's own cubbi-image.toml, built with `cubbi image build --from`, so
   it carries the real metadata label and persistent configs, and the claim is the real code
   path.

Needs: root (cgroup reads), a cubbi binary, docker, cubbi-base built on the endpoint.

    bench/pool.py --endpoint unix:///path/docker.sock [--runtime runc] [-n 7] [--concurrent 20]
        [--ports 24300-24399]
"""
import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

OWNER = f"bench-pool-{os.getpid()}"
READY_RE = re.compile(r"ready in ([0-9.]+)s")
REFILL_RE = re.compile(r"background \(pid (\d+)")
POOLED = "\nfrom the warm pool;"  # the CLI's own line, not the log's "not from the warm pool"
# cubbi's create steps as its log names them (CreateStep's Display), in order, and what each
# covers on the cold path and in a claim (pool_claim.rs reports its steps with the same names).
STEPS = [
    ("validating", "validate, empty-pool check", "validate (info, image, name)"),
    ("preparing SSH keys", "host key", None),
    ("allocating the SSH port", "port lock + pick", "claim: record volume, rename"),
    ("creating the container", "API create",
     "at once: networks, docker update, files + apply exec, SSH key exchange"),
    ("copying keys and environment in", "archive put", None),
    ("starting the container", "API start", None),
    ("waiting for sshd to accept the key", "start -> key accepted",
     "login on the connection opened meanwhile"),
]
# The claim's parts that run at once (pool_claim.rs logs each with took_ms).
CLAIM_PART_RE = re.compile(r"took_ms=(\d+).*claim: (.+?)\s*$|claim: (.+?) took_ms=(\d+)")
LINE_RE = re.compile(r"\s*([0-9.]+)s\s+\w+\s+\S+:\s+(.*)$")


def phases(stderr, wall):
    """Seconds per create step from cubbi's own (uptime-stamped) log, and the rest of the wall."""
    stamps = {}
    for line in re.sub(r"\x1b\[[0-9;]*m", "", stderr).splitlines():
        match = LINE_RE.match(line)
        if not match:
            continue
        at, message = float(match.group(1)), match.group(2).strip()
        if message.startswith("sshd accepted the key"):
            stamps.setdefault("accepted", at)
        elif message in [step for step, _, _ in STEPS]:
            stamps[message] = at  # the last: a cold create after an empty pool allocates twice
    for line in re.sub(r"\x1b\[[0-9;]*m", "", stderr).splitlines():
        part = CLAIM_PART_RE.search(line)
        if part:
            name = part.group(2) or part.group(3)
            took = part.group(1) or part.group(4)
            stamps.setdefault("parts", {})[name.strip()] = int(took) / 1000
    parts = stamps.pop("parts", {})
    order = [step for step, _, _ in STEPS if step in stamps] + ["accepted"]
    if "accepted" not in stamps:
        return {}
    found = {here: stamps[after] - stamps[here] for here, after in zip(order, order[1:])}
    found["rest"] = wall - (stamps["accepted"] - stamps[order[0]])
    for name, took in parts.items():
        found[f"part: {name}"] = took
    return found


class Cubbi:
    def __init__(self, binary, endpoint, runtime):
        self.binary = binary
        self.endpoint = endpoint
        self.home = tempfile.mkdtemp(prefix="cubbi-bench-home-")
        self.env = dict(os.environ, HOME=self.home, CUBBI_DOCKER_HOST=endpoint,
                        CUBBI_OWNER=OWNER, XDG_CONFIG_HOME=f"{self.home}/.config",
                        XDG_DATA_HOME=f"{self.home}/.local/share",
                        CUBBI_READY_TIMEOUT=os.environ.get("CUBBI_READY_TIMEOUT", "600"))
        self.env.pop("RUST_LOG", None)
        # Timed creates log their steps (as bench/sessions.py reads them).
        self.timed_env = dict(self.env, RUST_LOG="warn,cubbi=debug")
        self.runtime = ["--runtime", runtime] + (["--unsafe-runc"] if runtime == "runc" else [])

    def run(self, *args, check=True, env=None):
        result = subprocess.run([self.binary, *args], env=env or self.env, capture_output=True,
                                text=True)
        if check and result.returncode != 0:
            sys.exit(f"cubbi {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def __call__(self, *args, check=True):
        return self.run(*args, check=check).stdout

    def create(self, name, image="base"):
        """One timed create: (wall seconds, CLI-reported seconds or None, stderr)."""
        args = ["session", "create", "--image", image, "--no-connect", "--no-mount",
                "--name", name, *self.runtime]
        started = time.perf_counter()
        result = self.run(*args, check=False, env=self.timed_env)
        wall = time.perf_counter() - started
        if result.returncode != 0:
            raise RuntimeError(f"create {name} failed ({result.returncode}):\n{result.stderr}")
        said = READY_RE.search(result.stderr)
        return wall, float(said.group(1)) if said else None, result.stderr

    def pool_row(self, image="base"):
        rows = json.loads(self("--json", "pool", "status"))
        for row in rows:
            if row["image"] == image:
                return row
        return {"image": image, "ready": 0, "not_ready": 0, "target": 0}

    def docker(self, *args):
        return subprocess.run(["docker", "-H", self.endpoint, *args], check=True,
                              capture_output=True, text=True).stdout


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def wait_refills(cubbi, pids, target, timeout=900, image="base"):
    """Waits for the detached refills to exit and the pool to be back at its target."""
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            sys.exit(f"refill(s) {pids} still running after {timeout} s")
        time.sleep(0.5)
    wait_ready(cubbi, target, timeout=max(60, deadline - time.monotonic()), image=image)


def wait_ready(cubbi, target, timeout=600, image="base"):
    deadline = time.monotonic() + timeout
    while True:
        row = cubbi.pool_row(image)
        if row["ready"] == target and row["not_ready"] == 0 and row["target"] == target:
            return
        if time.monotonic() > deadline:
            sys.exit(f"pool not ready: {row}, wanted ready == target == {target}")
        time.sleep(0.5)


def fill(cubbi, target, image="base"):
    cubbi("config", "set", f"pool.{image}", str(target))
    cubbi("pool", "fill")
    wait_ready(cubbi, target, image=image)


def drain(cubbi, image="base"):
    cubbi("pool", "drain")
    row = cubbi.pool_row(image)
    if row["ready"] or row["not_ready"]:
        sys.exit(f"drain left members: {row}")


def refill_pid(stderr):
    found = REFILL_RE.search(stderr)
    return int(found.group(1)) if found else None


def check_pooled(name, stderr):
    if POOLED not in "\n" + stderr:
        sys.exit(f"create {name} did not claim a pool member:\n{stderr}")


def check_cold(cubbi, name, stderr):
    if POOLED in "\n" + stderr:
        sys.exit(f"create {name} was meant to be cold but claimed:\n{stderr}")
    shown = json.loads(cubbi("--json", "session", "show", name))
    if shown.get("pool"):
        sys.exit(f"create {name} was meant to be cold: {shown}")


def p95(samples):
    if len(samples) == 1:
        return samples[0]
    return statistics.quantiles(samples, n=20, method="inclusive")[18]


def ms(seconds):
    return f"{seconds * 1000:8.0f} ms"


def machine_cpu():
    """CPU seconds the whole machine has spent (all cores, /proc/stat), idle and iowait left out."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    busy = sum(fields) - fields[3] - fields[4]
    return busy / os.sysconf("SC_CLK_TCK")


def stat_cpu(stat):
    """utime + stime + the reaped children's, from a /proc/PID/stat line, in seconds."""
    fields = stat.rsplit(")", 1)[1].split()
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / os.sysconf("SC_CLK_TCK")


def daemons_cpu():
    """CPU seconds of dockerd, containerd and the containerd shims (with the children they
    reaped: runc for each create, exec and update, dockerd's untar helpers)."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        if comm in ("dockerd", "containerd") or comm.startswith("containerd-shim"):
            total += stat_cpu(stat)
    return total


def cubbi_cpu(service_pid):
    """CPU seconds of cubbi: the service process, or this bench's finished children (the CLIs
    it ran and waited for)."""
    if service_pid:
        with open(f"/proc/{service_pid}/stat") as f:
            return stat_cpu(f.read())
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class BatchCpu:
    """Where a timed batch's CPU went: the whole machine, the Docker daemons, and cubbi."""

    def __init__(self, service_pid=None):
        self.service_pid = service_pid
        self.start = self.read()

    def read(self):
        return machine_cpu(), daemons_cpu(), cubbi_cpu(self.service_pid)

    def done(self):
        machine, daemons, cubbi = (b - a for a, b in zip(self.start, self.read()))
        return {"machine": machine, "daemons": daemons, "cubbi": cubbi,
                "rest": machine - daemons - cubbi}


# Where each timed batch's CPU went (BatchCpu.done), by label.
BATCH_CPU = {}


def concurrent(cubbi, names, label=None):
    """Starts one create per name at once; returns [(wall, reported, stderr)] and the wall time."""
    results = [None] * len(names)
    gate = threading.Barrier(len(names) + 1)

    def one(i, name):
        gate.wait()
        try:
            results[i] = cubbi.create(name)
        except RuntimeError as err:
            results[i] = err

    threads = [threading.Thread(target=one, args=(i, n)) for i, n in enumerate(names)]
    for thread in threads:
        thread.start()
    gate.wait()
    started, cpu = time.perf_counter(), BatchCpu()
    for thread in threads:
        thread.join()
    total = time.perf_counter() - started
    if label:
        BATCH_CPU[label] = cpu.done()
    failed = [r for r in results if isinstance(r, Exception)]
    if failed:
        sys.exit(f"{len(failed)} of {len(names)} concurrent creates failed; first:\n{failed[0]}")
    return results, total


def service_creates(cubbi, k, runtime, pool):
    """`cubbi serve` on the same endpoint (with `[pool] base = k` when `pool`, which it fills
    itself and refills every 2 s), then k `POST /v1/sessions` at once, each answered once the
    session's sshd accepts a key (201). Returns ([seconds per create], batch wall, number that
    came from the pool); every session is closed and the service stopped."""
    from serve import Service, free_port  # bench/serve.py: the same HTTP client

    tmp = tempfile.mkdtemp(prefix="cubbi-bench-pool-serve-")
    env = dict(cubbi.env, HOME=tmp, XDG_CONFIG_HOME=f"{tmp}/.config")
    state = f"{tmp}/state"
    os.makedirs(state)
    config = f"{tmp}/service.toml"
    with open(config, "w") as f:
        f.write(f"allow_unsafe_runc = {'true' if runtime == 'runc' else 'false'}\n\n"
                f"[docker]\nendpoint = \"{cubbi.endpoint}\"\n\n"
                f"[ssh]\nbind = \"127.0.0.1\"\n\n"
                f"[limits]\nsessions_per_user = {k + 10}\n"
                + (f"\n[pool]\nbase = {k}\n" if pool else ""))
    token = subprocess.run([cubbi.binary, "serve", "token", "create", "--user", "bench",
                            "--state-dir", state], env=env, check=True, capture_output=True,
                           text=True).stdout.strip().split()[-1]
    port = free_port()
    log = open(f"{tmp}/serve.log", "w")
    service = subprocess.Popen([cubbi.binary, "--endpoint", cubbi.endpoint, "serve", "--config",
                                config, "--listen", f"127.0.0.1:{port}", "--state-dir", state],
                               env=env, stdout=log, stderr=subprocess.STDOUT)
    api = Service(f"http://127.0.0.1:{port}", token)
    kind = "pool" if pool else "cold"
    names = [f"bp-svc-{kind}-{i}" for i in range(k)]
    try:
        deadline = time.monotonic() + 600
        while True:
            status, _, _ = api.request("GET", "/healthz", auth=False, timeout=2)
            if status == 200 and (not pool or cubbi.pool_row()["ready"] >= k):
                break
            if service.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"cubbi serve: not up (or its pool not at {k}):\n"
                         + open(f"{tmp}/serve.log").read()[-3000:])
            time.sleep(0.5)
        time.sleep(5)  # the members' systemd settles, as for the CLI's runs
        results = [None] * k
        gate = threading.Barrier(k + 1)

        def one(i):
            gate.wait()
            results[i] = api.request("POST", "/v1/sessions",
                                     {"image": "base", "name": names[i], "runtime": runtime})

        threads = [threading.Thread(target=one, args=(i,)) for i in range(k)]
        for thread in threads:
            thread.start()
        gate.wait()
        started, cpu = time.perf_counter(), BatchCpu(service.pid)
        for thread in threads:
            thread.join()
        total = time.perf_counter() - started
        BATCH_CPU[f"service, {kind}"] = cpu.done()
        failed = [r for r in results if r[0] != 201]
        if failed:
            sys.exit(f"{len(failed)} of {k} service creates failed; first: {failed[0][:2]}")
        from_pool = sum(bool(r[1].get("pool")) for r in results)
        return [r[2] for r in results], total, from_pool
    finally:
        for name in names:
            api.request("DELETE", f"/v1/sessions/{name}")
        service.terminate()
        service.wait(timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)


def cgroup_dirs(pid):
    """The container's cgroup dirs for memory and CPU, v2 or v1, from its init's view."""
    paths = {}
    with open(f"/proc/{pid}/cgroup") as lines:
        for line in lines:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            path = re.sub(r"/init\.scope$", "", path)
            for controller in controllers.split(",") if controllers else ["unified"]:
                paths[controller] = path
    if "unified" in paths and os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        base = "/sys/fs/cgroup" + paths["unified"]
        return ("v2", base, base)
    cpu_root = next(d for d in ["/sys/fs/cgroup/cpuacct", "/sys/fs/cgroup/cpu,cpuacct"]
                    if os.path.isdir(d))
    return ("v1", "/sys/fs/cgroup/memory" + paths["memory"], cpu_root + paths["cpuacct"])


def read_usage(dirs):
    """(memory bytes, anonymous bytes, CPU seconds used so far) of one cgroup."""
    kind, memory, cpu = dirs
    stat = {}
    with open(f"{memory}/memory.stat") as lines:
        for line in lines:
            key, value = line.split()
            stat[key] = int(value)
    if kind == "v2":
        with open(f"{memory}/memory.current") as f:
            current = int(f.read())
        anon = stat.get("anon", 0)
        with open(f"{cpu}/cpu.stat") as lines:
            usage = next(int(l.split()[1]) for l in lines if l.startswith("usage_usec")) / 1e6
    else:
        with open(f"{memory}/memory.usage_in_bytes") as f:
            current = int(f.read())
        anon = stat.get("total_rss", stat.get("rss", 0))
        with open(f"{cpu}/cpuacct.usage") as f:
            usage = int(f.read()) / 1e9
    return current, anon, usage


def idle_members(cubbi, idle_secs):
    ids = cubbi.docker("ps", "-q", "--filter", "label=io.cubbi.pool=base").split()
    dirs = {}
    for cid in ids:
        pid = int(cubbi.docker("inspect", "-f", "{{.State.Pid}}", cid).strip())
        dirs[cid] = cgroup_dirs(pid)
    before = {cid: read_usage(d) for cid, d in dirs.items()}
    time.sleep(idle_secs)
    after = {cid: read_usage(d) for cid, d in dirs.items()}
    memory = [after[c][0] for c in ids]
    anon = [after[c][1] for c in ids]
    cpu = [after[c][2] - before[c][2] for c in ids]
    stats = cubbi.docker("stats", "--no-stream", "--format", "{{.MemUsage}}", *ids).split("\n")
    return len(ids), memory, anon, cpu, dirs[ids[0]][0], stats[0].split("/")[0].strip()


def tool_serial(cubbi, tool, n, settle):
    """Serial creates of a tool image, from the pool (a member holding the bench owner's data
    volume) and cold, as for `base`: (pool walls, cold walls, note). Builds a stand-in when the
    tool image is not on the endpoint."""
    tag = f"cubbi-{tool}"
    note = ""
    have = subprocess.run(["docker", "-H", cubbi.endpoint, "image", "inspect", tag],
                          capture_output=True).returncode == 0
    if not have:
        # The tool's own cubbi-image.toml on a Dockerfile that adds nothing to cubbi-base:
        # `cubbi image build --from` labels it with exactly the metadata the real build gives.
        build = tempfile.mkdtemp(prefix="cubbi-bench-tool-")
        here = os.path.dirname(os.path.abspath(__file__))
        shutil.copy(f"{here}/../images/{tool}/cubbi-image.toml", build)
        with open(f"{build}/Dockerfile", "w") as f:
            f.write("ARG BASE=cubbi-base\nFROM ${BASE}\n")
        cubbi("image", "build", "--from", build, "--tag", tag)
        shutil.rmtree(build, ignore_errors=True)
        note = (f" [{tag} is not built here: a stand-in (cubbi-base + the tool's "
                "cubbi-image.toml, built with `cubbi image build --from`) was used]")
    pool_walls, cold_walls = [], []
    try:
        # Warm-up: the owner's data volume, the image's first start.
        cubbi("config", "set", f"pool.{tool}", "1")
        cubbi.create("bp-tool-warm", tool)
        cubbi("session", "close", "bp-tool-warm")
        for i in range(n):
            fill(cubbi, 1, tool)
            time.sleep(settle)
            name = f"bp-tool-pool-{i}"
            wall, _, stderr = cubbi.create(name, tool)
            check_pooled(name, stderr)
            pool_walls.append(wall)
            wait_refills(cubbi, [p for p in [refill_pid(stderr)] if p], 1, image=tool)
            cubbi("session", "close", name)
            drain(cubbi, tool)
            time.sleep(settle)
            name = f"bp-tool-cold-{i}"
            wall, _, stderr = cubbi.create(name, tool)
            check_cold(cubbi, name, stderr)
            cold_walls.append(wall)
            cubbi("session", "close", name)
    finally:
        cubbi("config", "unset", f"pool.{tool}", check=False)
        cubbi("pool", "drain", check=False)
        if not have:
            subprocess.run(["docker", "-H", cubbi.endpoint, "image", "rm", tag],
                           capture_output=True)
    return pool_walls, cold_walls, note


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--cubbi", default="target/release/cubbi")
    parser.add_argument("--runtime", default="sysbox-runc")
    parser.add_argument("-n", type=int, default=7)
    parser.add_argument("--concurrent", type=int, default=20)
    parser.add_argument("--idle-secs", type=int, default=30)
    parser.add_argument("--settle", type=float, default=8.0,
                        help="seconds to let freshly booted members settle (their systemd "
                             "still starts units after sshd answers) before a timed claim: a "
                             "pool member normally waits idle; 0 measures a just-booted one")
    parser.add_argument("--tool", default="claude-code")
    parser.add_argument("--ports", metavar="START-END",
                        help="SSH port range (ports.start/end) away from other dockerds' "
                             "sessions on a shared host")
    args = parser.parse_args()
    cubbi = Cubbi(os.path.abspath(args.cubbi), args.endpoint, args.runtime)
    cubbi("config", "set", "defaults.runtime", args.runtime)
    if args.runtime == "runc":
        cubbi("config", "set", "defaults.allow_unsafe_runc", "true")
    if args.ports:
        start, end = args.ports.split("-")
        cubbi("config", "set", "ports.end", end)
        cubbi("config", "set", "ports.start", start)
    made = []

    def close():
        if made:
            cubbi("session", "close", *made)
            made.clear()

    try:
        # Warm-up: the owner's network, the image's first start.
        cubbi("config", "set", "pool.base", "1")
        cubbi.create("bp-warm")
        made.append("bp-warm")
        close()

        pool_wall, pool_said, cold_wall, cold_said = [], [], [], []
        pool_phases, cold_phases = [], []
        for i in range(args.n):
            fill(cubbi, 1)
            time.sleep(args.settle)
            name = f"bp-pool-{i}"
            wall, said, stderr = cubbi.create(name)
            made.append(name)
            check_pooled(name, stderr)
            pool_wall.append(wall)
            pool_said.append(said)
            pool_phases.append(phases(stderr, wall))
            wait_refills(cubbi, [p for p in [refill_pid(stderr)] if p], 1)
            close()

            drain(cubbi)
            time.sleep(args.settle)  # the same quiet machine for the cold create
            name = f"bp-cold-{i}"
            wall, said, stderr = cubbi.create(name)
            made.append(name)
            check_cold(cubbi, name, stderr)
            cold_wall.append(wall)
            cold_said.append(said)
            cold_phases.append(phases(stderr, wall))
            close()

        k = args.concurrent
        filled_at = time.perf_counter()
        fill(cubbi, k)
        fill_secs = time.perf_counter() - filled_at
        time.sleep(5)
        members, memory, anon, cpu, cgroup_kind, stats_mem = idle_members(cubbi, args.idle_secs)

        names = [f"bp-cc-pool-{i}" for i in range(k)]
        pooled, pooled_total = concurrent(cubbi, names, "CLI pool, refilling")
        made.extend(names)
        claimed = sum(POOLED in "\n" + r[2] for r in pooled)
        refills = [p for p in (refill_pid(r[2]) for r in pooled) if p]
        wait_refills(cubbi, refills, k)
        close()
        # The same, with no refill while they run (defaults.pool_refill = manual): the claims
        # alone, without the refill's boots sharing the CPU.
        fill(cubbi, k)
        time.sleep(max(5, args.settle))
        cubbi("config", "set", "defaults.pool_refill", "manual")
        names = [f"bp-cc-quiet-{i}" for i in range(k)]
        quiet, quiet_total = concurrent(cubbi, names, "CLI pool, no refill")
        made.extend(names)
        quiet_claimed = sum(POOLED in "\n" + r[2] for r in quiet)
        quiet_phases = [phases(r[2], r[0]) for r in quiet]
        cubbi("config", "unset", "defaults.pool_refill")
        close()
        drain(cubbi)
        names = [f"bp-cc-cold-{i}" for i in range(k)]
        colds, cold_total = concurrent(cubbi, names, "CLI cold")
        made.extend(names)
        for name, r in zip(names, colds):
            check_cold(cubbi, name, r[2])
        close()
        cubbi("config", "unset", "pool.base")
        # The same k at once through `cubbi serve` (one process, no CLI start per create):
        # with its own pool of k, then cold with no pool.
        svc_pool, svc_pool_total, svc_claimed = service_creates(cubbi, k, args.runtime, True)
        drain(cubbi)
        svc_cold, svc_cold_total, _ = service_creates(cubbi, k, args.runtime, False)

        tool_pool, tool_cold, tool_note = tool_serial(cubbi, args.tool, args.n, args.settle)

        def row(label, samples, base=None):
            line = f"  {label:<36} median {ms(statistics.median(samples))}   p95 {ms(p95(samples))}"
            if base is not None:
                line += f"   cold/pool {statistics.median(base) / statistics.median(samples):5.1f}x"
            print(line)

        print(f"runtime {args.runtime}, base, n={args.n} serial creates each way "
              "(create to key accepted):")
        row("cold, CLI wall to exit", cold_wall)
        row("pool, CLI wall to exit", pool_wall, cold_wall)
        if all(s is not None for s in pool_said + cold_said):
            row("cold, CLI says 'ready in'", cold_said)
            row("pool, CLI says 'ready in'", pool_said, cold_said)
        print("  phases, medians from cubbi's own log (cold | pool: what the step covers there):")
        for step, cold_label, pool_label in STEPS + [("rest", "CLI start/exit, ssh config",
                                                      "CLI start/exit, ssh config, rename, refill spawn")]:
            cold_s = [p[step] for p in cold_phases if step in p]
            pool_s = [p[step] for p in pool_phases if step in p]
            if cold_s:
                pool_m = ms(statistics.median(pool_s)) if pool_s else f"{'-':>11}"
                print(f"    {cold_label:<30} {ms(statistics.median(cold_s))} | "
                      f"{pool_m}  {pool_label or '(no such step)'}")
        part_names = sorted({key for p in pool_phases for key in p if key.startswith("part: ")})
        for key in part_names:
            took = [p[key] for p in pool_phases if key in p]
            print(f"    {'':<30} {'':>11} | {ms(statistics.median(took))}    of which {key[6:]}")
        print(f"{k} concurrent creates (pool filled to {k} first, booted in {fill_secs:.1f} s; "
              f"{claimed} of {k} claimed):")
        for label, results, total in [("pool, refilling", pooled, pooled_total),
                                      (f"pool, no refill ({quiet_claimed} claimed)", quiet,
                                       quiet_total),
                                      ("cold", colds, cold_total)]:
            walls = [r[0] for r in results]
            print(f"  {label}: median {ms(statistics.median(walls))}   p95 {ms(p95(walls))}   "
                  f"max {ms(max(walls))}   all {k} done in {ms(total)}")
        print("  where a claim's time goes with no refill (medians of the 20, cubbi's log):")
        for step, _, pool_label in STEPS + [("rest", None, "CLI start/exit, ssh config, rename")]:
            took = [p[step] for p in quiet_phases if step in p]
            if took and pool_label:
                print(f"    {ms(statistics.median(took))}  {pool_label}")
        for key in sorted({key for p in quiet_phases for key in p if key.startswith("part: ")}):
            took = [p[key] for p in quiet_phases if key in p]
            print(f"    {ms(statistics.median(took))}    of which {key[6:]}")
        print(f"  cold/pool: median {statistics.median([r[0] for r in colds]) / statistics.median([r[0] for r in pooled]):.1f}x, "
              f"all-{k} wall {cold_total / pooled_total:.1f}x")
        print(f"{k} concurrent POST /v1/sessions to `cubbi serve` (request to 201, sshd ready):")
        for label, walls, total in [(f"service pool of {k}, refilling ({svc_claimed} claimed)",
                                     svc_pool, svc_pool_total),
                                    ("service, cold", svc_cold, svc_cold_total)]:
            print(f"  {label}: median {ms(statistics.median(walls))}   p95 {ms(p95(walls))}   "
                  f"max {ms(max(walls))}   all {k} done in {ms(total)}")
        print(f"  cold/pool: median {statistics.median(svc_cold) / statistics.median(svc_pool):.1f}x, "
              f"p95 {p95(svc_cold) / p95(svc_pool):.1f}x")
        cores = os.cpu_count()
        print(f"machine CPU per create in each batch of {k} ({cores} cores: a batch cannot be done "
              f"sooner than its CPU / {cores}):")
        for label, batch in BATCH_CPU.items():
            print(f"  {label:<22} {ms(batch['machine'] / k)} per create "
                  f"(dockerd+containerd+shims+runc {batch['daemons'] * 1000 / k:.0f} ms, cubbi "
                  f"{batch['cubbi'] * 1000 / k:.0f} ms, the rest: containers, refills, kernel "
                  f"{batch['rest'] * 1000 / k:.0f} ms); the batch's CPU / {cores} = "
                  f"{ms(batch['machine'] / cores)}")
        print(f"idle pool members ({members} booted, cgroup {cgroup_kind}), medians per member:")
        print(f"  memory {statistics.median(memory) / 2**20:6.0f} MiB "
              f"(anonymous {statistics.median(anon) / 2**20:.0f} MiB; "
              f"docker stats says {stats_mem} for one)")
        print(f"  CPU    {statistics.median(cpu) * 1000:6.0f} ms over {args.idle_secs} s idle "
              f"({100 * statistics.median(cpu) / args.idle_secs:.2f}% of a core; "
              f"max member {max(cpu) * 1000:.0f} ms)")
        print(f"tool image {args.tool}, n={args.n} serial creates each way (its members hold the "
              f"owner's data volume){tool_note}:")
        row("cold, CLI wall to exit", tool_cold)
        row("pool, CLI wall to exit", tool_pool, tool_cold)
        if claimed != k:
            sys.exit(f"only {claimed} of {k} concurrent creates claimed a member")
    finally:
        if made:
            cubbi("session", "close", *made, check=False)
        cubbi("config", "unset", "pool.base", check=False)
        cubbi("pool", "drain", check=False)
        # The bench owner's network and data volume (on a shared endpoint they would stay).
        for kind in ("network", "volume"):
            listed = subprocess.run(["docker", "-H", cubbi.endpoint, kind, "ls", "-q", "--filter",
                                     f"label=io.cubbi.owner={OWNER}"],
                                    capture_output=True, text=True).stdout.split()
            if listed:
                subprocess.run(["docker", "-H", cubbi.endpoint, kind, "rm", *listed],
                               capture_output=True)
        shutil.rmtree(cubbi.home, ignore_errors=True)


if __name__ == "__main__":
    main()
