#!/usr/bin/env python3
"""Sessions on a Docker Swarm of three dockerds vs the local backend on one of them, same run.

Three dockerds, each in a network namespace of its own joined through a bridge in a switch
namespace (the test suite's layout), form a Swarm; sessions run under runc with the unsafe
settings made node-wide (no seccomp filter, private cgroup namespaces), as cubbi setup
--unsafe-runc makes them on a swarm node. Two `cubbi serve`, both in node 1's namespace: one
with [backend] kind = "swarm" (node 1 the manager), one local on node 1's engine. Measured:

- create to key accepted (the 201 of POST /v1/sessions), serial: Swarm vs local, medians,
  p95 and the ratio;
- 30 sessions created 10 at a time through the Swarm backend: p50, p95, the nodes they went
  to, and where the time goes: the request to the service's creation (validation,
  placement, secret), the service's creation to its container's start (the scheduler and
  the task start), and the container's start to the key accepted (the boot).

    sudo bench/swarm.sh [-n 7] [--total 30] [--batch 10]
"""

import argparse
import concurrent.futures
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

SUBNET = "10.253.9"
NODES = 3


def run(*args, check=True, **kwargs):
    return subprocess.run(args, check=check, capture_output=True, text=True, **kwargs)


def docker(sock, *args, check=True):
    return run("docker", "-H", sock, *args, check=check)


class Cluster:
    def __init__(self, root, image_from, cubbi):
        self.root = root
        self.tag = str(os.getpid() % 100000)
        self.switch = f"cbbsw{self.tag}"
        self.nodes = []
        self.cubbi = cubbi
        self.image_from = image_from
        self.processes = []

    def netns(self, name):
        return f"/run/netns/{name}"

    def up(self):
        run("ip", "netns", "add", self.switch)
        run("ip", "-n", self.switch, "link", "add", "sw0", "type", "bridge")
        run("ip", "-n", self.switch, "link", "set", "sw0", "up")
        # The bench itself on the bridge, to reach the services.
        outer, inner = f"cbbo0-{self.tag}", f"cbbi0-{self.tag}"
        run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
        run("ip", "link", "set", outer, "netns", self.switch)
        run("ip", "-n", self.switch, "link", "set", outer, "master", "sw0", "up")
        run("ip", "addr", "add", f"{SUBNET}.2/24", "dev", inner)
        run("ip", "link", "set", inner, "up")
        self.host_link = inner
        profile = os.path.join(self.root, "seccomp.json")
        with open(profile, "w") as f:
            f.write('{"defaultAction":"SCMP_ACT_ALLOW"}')
        for index in range(1, NODES + 1):
            ns = f"cbbn{index}-{self.tag}"
            run("ip", "netns", "add", ns)
            outer, inner = f"cbbo{index}-{self.tag}", f"cbbi{index}-{self.tag}"
            run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
            run("ip", "link", "set", outer, "netns", self.switch)
            run("ip", "link", "set", inner, "netns", ns)
            run("ip", "-n", self.switch, "link", "set", outer, "master", "sw0", "up")
            address = f"{SUBNET}.{10 + index}"
            run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", inner)
            run("ip", "-n", ns, "link", "set", inner, "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
            home = os.path.join(self.root, f"n{index}")
            os.makedirs(home)
            sock = f"unix://{home}/docker.sock"
            log = open(os.path.join(home, "dockerd.log"), "w")
            process = subprocess.Popen(
                ["nsenter", f"--net={self.netns(ns)}", "dockerd", f"--host={sock}",
                 f"--data-root={home}/data", f"--exec-root={home}/exec",
                 f"--pidfile={home}/docker.pid", f"--seccomp-profile={profile}",
                 "--default-cgroupns-mode=private", "--label", "io.cubbi.runtime=runc"],
                stdout=log, stderr=subprocess.STDOUT)
            self.processes.append(process)
            self.nodes.append({"ns": ns, "address": address, "sock": sock, "home": home})
        for node in self.nodes:
            for _ in range(150):
                if docker(node["sock"], "version", check=False).returncode == 0:
                    break
                time.sleep(0.2)
        first = self.nodes[0]
        docker(first["sock"], "swarm", "init", "--advertise-addr", first["address"])
        token = docker(first["sock"], "swarm", "join-token", "-q", "worker").stdout.strip()
        for node in self.nodes[1:]:
            docker(node["sock"], "swarm", "join", "--token", token,
                   "--advertise-addr", node["address"], f"{first['address']}:2377")
        for node in self.nodes:
            saved = subprocess.Popen(["docker", "-H", self.image_from, "save", "cubbi-base:latest"],
                                     stdout=subprocess.PIPE)
            run("docker", "-H", node["sock"], "load", stdin=saved.stdout)
            saved.wait()

    def serve(self, name, kind, port):
        """A `cubbi serve` in node 1's namespace; returns (url, token)."""
        first = self.nodes[0]
        state = os.path.join(self.root, f"serve-{name}")
        os.makedirs(state)
        config = os.path.join(state, "service.toml")
        with open(config, "w") as f:
            f.write(f'allow_unsafe_runc = true\nstate_dir = "{state}"\n'
                    f'[server]\nhost = "0.0.0.0"\nport = {port}\n'
                    f'[docker]\nendpoint = "{first["sock"]}"\n'
                    f'[ssh]\nbind = "0.0.0.0"\n[limits]\nsessions_per_user = 0\n'
                    f'[backend]\nkind = "{kind}"\n')
        token = run(self.cubbi, "serve", "token", "--config", config, "create",
                    "--user", f"bench-{name}").stdout.strip()
        log = open(os.path.join(state, "serve.log"), "w")
        process = subprocess.Popen(
            ["nsenter", f"--net={self.netns(first['ns'])}", self.cubbi, "serve", "--config", config],
            stdout=log, stderr=subprocess.STDOUT)
        self.processes.insert(0, process)
        url = f"http://{first['address']}:{port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{url}/healthz", timeout=1)
                break
            except Exception:
                time.sleep(0.1)
        return url, token

    def down(self):
        for process in self.processes:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        for node in self.nodes:
            run("ip", "netns", "delete", node["ns"], check=False)
        run("ip", "netns", "delete", self.switch, check=False)
        run("ip", "link", "delete", getattr(self, "host_link", "none"), check=False)


def request(url, token, method, path, body=None, timeout=300):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{url}{path}", data=data, method=method, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        raise RuntimeError(f"{method} {url}{path}: {err.code} {err.read()[:2000]!r}") from None


SPEC = {"image": "base", "runtime": "runc", "memory": "512m"}


def create(url, token, name):
    started = time.time()
    session = request(url, token, "POST", "/v1/sessions", {**SPEC, "name": name})
    return started, time.time(), session


def close(url, token, name):
    request(url, token, "DELETE", f"/v1/sessions/{name}")


def p95(samples):
    if len(samples) == 1:
        return samples[0]
    return statistics.quantiles(samples, n=20, method="inclusive")[18]


def ms(seconds):
    return f"{seconds * 1000:7.0f} ms"


def parse_time(text):
    # Docker's RFC 3339 with nanoseconds; Python takes microseconds.
    text = text.rstrip("Z")
    if "." in text:
        head, frac = text.split(".", 1)
        text = f"{head}.{frac[:6]}"
    return datetime.datetime.fromisoformat(text).replace(
        tzinfo=datetime.timezone.utc).timestamp()


def phases(cluster, session, started, done):
    """(to service, scheduler + task start, boot to key) of one Swarm session."""
    manager = cluster.nodes[0]["sock"]
    created = parse_time(docker(manager, "service", "inspect", session["id"], "--format",
                                "{{json .CreatedAt}}").stdout.strip().strip('"'))
    node = next(n for n in cluster.nodes if n["address"] == session["ssh"]["host"])
    container = docker(node["sock"], "ps", "-q", "--filter",
                       f"label=com.docker.swarm.service.id={session['id']}").stdout.split()[0]
    started_at = parse_time(docker(node["sock"], "inspect", container, "--format",
                                   "{{.State.StartedAt}}").stdout.strip())
    return created - started, started_at - created, done - started_at


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cubbi", required=True)
    parser.add_argument("--image-from", required=True, help="the endpoint holding cubbi-base")
    parser.add_argument("-n", type=int, default=7)
    parser.add_argument("--total", type=int, default=30)
    parser.add_argument("--batch", type=int, default=10)
    args = parser.parse_args()

    root = tempfile.mkdtemp(prefix="cubbi-bench-swarm-")
    cluster = Cluster(root, args.image_from, args.cubbi)
    try:
        began = time.time()
        cluster.up()
        print(f"3-node Swarm formed and cubbi-base loaded on each in {time.time() - began:.1f}s")
        swarm_url, swarm_token = cluster.serve("swarm", "swarm", 3901)
        local_url, local_token = cluster.serve("local", "local", 3902)

        # Serial, alternating, so both see the same machine.
        serial = {"swarm": [], "local": []}
        for round_ in range(args.n + 1):
            for kind, url, token in (("swarm", swarm_url, swarm_token),
                                     ("local", local_url, local_token)):
                name = f"s{kind[0]}{round_}"
                started, done, _ = create(url, token, name)
                if round_ > 0:  # the first of each warms caches (image, networks)
                    serial[kind].append(done - started)
                close(url, token, name)
        print(f"\nserial create to key accepted, runc, {args.n} each (after one warm-up):")
        for kind in ("local", "swarm"):
            samples = serial[kind]
            print(f"  {kind:6} median {ms(statistics.median(samples))}  p95 {ms(p95(samples))}")
        ratio = statistics.median(serial["swarm"]) / statistics.median(serial["local"])
        print(f"  swarm / local: {ratio:.2f}x")

        print(f"\n{args.total} Swarm sessions, {args.batch} at a time:")
        results = []
        with concurrent.futures.ThreadPoolExecutor(max_workers=args.batch) as pool:
            for start in range(0, args.total, args.batch):
                names = [f"c{i}" for i in range(start, min(start + args.batch, args.total))]
                results += list(pool.map(lambda n: create(swarm_url, swarm_token, n), names))
        walls = [done - started for started, done, _ in results]
        nodes = {}
        for _, _, session in results:
            nodes[session["ssh"]["host"]] = nodes.get(session["ssh"]["host"], 0) + 1
        print(f"  create to key accepted: p50 {ms(statistics.median(walls))}  p95 {ms(p95(walls))}")
        print("  per node: " + ", ".join(f"{k} {v}" for k, v in sorted(nodes.items())))
        split = [phases(cluster, s, started, done) for started, done, s in results]
        for index, label in enumerate(("request to service (validate, place, secret)",
                                       "service to container start (scheduler, task)",
                                       "container start to key accepted (boot)")):
            column = [row[index] for row in split]
            print(f"  {label:48} p50 {ms(statistics.median(column))}  p95 {ms(p95(column))}")
        for _, _, session in results:
            close(swarm_url, swarm_token, session["name"])
    finally:
        cluster.down()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
