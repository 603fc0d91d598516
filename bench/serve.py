#!/usr/bin/env python3
"""`cubbi serve` benchmark: prints its figures, with baselines measured in the same run, under
one runtime (--runtime sysbox-runc, the default, or runc). Not a test: nothing is asserted,
the targets are printed beside the figures.

1. Starts `cubbi serve` (a config, a state dir and a token of its own), waits for /healthz,
   reads its idle RSS.
2. Concurrent create: --concurrent (20) `POST /v1/sessions` at once (one thread each, urllib,
   released together): how many answered 201 (ready: sshd accepts the key), distinct SSH
   ports, any 5xx, create-to-ready per request (median, p95, max) and the batch's wall time.
   Baseline just before, on the same engine: the same number of concurrent
   `cubbi session create --image base --no-connect` through the local CLI (then closed).
   One untimed warm-up create of each first, so first-use costs (keys, data volume) fall on
   no sample.
3. Grows to --sessions (50) through the service, 10 at a time.
4. `GET /v1/sessions` (all --sessions listed) under `wrk` for --duration seconds: req/s and
   p50/p90/p99; baseline `GET /healthz` (no token, no sessions) the same way. The service's
   RSS and CPU are sampled every 200 ms during both. Targets (the issue): >= 5,000 req/s and
   p99 <= 10 ms on 2 cores.
5. Closes every session (DELETE, 10 at a time), stops the service with SIGTERM and times its
   exit.

Needs: a cubbi binary with `cubbi serve` (default target/release/cubbi), `wrk`, cubbi-base
built on the endpoint. Use bench/serve-private-engine.sh to run it on a throwaway dockerd.

    bench/serve.py --endpoint unix:///path/docker.sock [--runtime runc] [--sessions 50]
                   [--concurrent 20] [--duration 15]
"""
import argparse
import concurrent.futures
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

OWNER = f"bench-{os.getpid()}"
USER = "bench"
TARGET_RPS = 5000
TARGET_P99_MS = 10.0


def run(cmd, env=None, check=True):
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {result.stderr.strip()[-2000:]}")
    return result


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values, p):
    """Nearest rank: the smallest value with at least p% of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def ms(seconds):
    return f"{seconds * 1000:.0f}"


def dist(values):
    """median / p95 / max of durations in seconds, as ms."""
    if not values:
        return "no samples"
    return (f"median {ms(statistics.median(values))} ms, p95 {ms(percentile(values, 95))} ms, "
            f"max {ms(max(values))} ms (min {ms(min(values))}, n={len(values)})")


class Service:
    def __init__(self, base, token):
        self.base = base
        self.token = token

    def request(self, method, path, body=None, auth=True, timeout=300):
        """(status, parsed body or text, seconds)."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        start = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        except (urllib.error.URLError, OSError) as err:
            return None, f"{type(err).__name__}: {err}", time.perf_counter() - start
        elapsed = time.perf_counter() - start
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode(errors="replace")
        return status, parsed, elapsed


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


class Sampler:
    """The service's RSS every 200 ms while running; its CPU time over the whole span."""

    def __init__(self, pid, period=0.2):
        self.pid, self.period = pid, period
        self.samples = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self):
        while not self.stop.is_set():
            value = rss_kib(self.pid)
            if value is not None:
                self.samples.append(value)
            self.stop.wait(self.period)

    def __enter__(self):
        self.cpu0, self.t0 = cpu_seconds(self.pid), time.perf_counter()
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        cpu1 = cpu_seconds(self.pid)
        wall = time.perf_counter() - self.t0
        self.cpu_share = (cpu1 - self.cpu0) / wall if None not in (cpu1, self.cpu0) else None

    @property
    def peak(self):
        return max(self.samples) if self.samples else None


def mib(kib):
    return "n/a" if kib is None else f"{kib / 1024:.1f} MiB"


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def to_ms(text):
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text.strip())
    return float(match.group(1)) * UNITS[match.group(2)] if match else None


def wrk(url, threads, connections, duration, token=None):
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency"]
    if token:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    result = run(cmd + [url])
    out = result.stdout
    figures = {"raw": out}
    found = re.search(r"Requests/sec:\s*([0-9.]+)", out)
    figures["rps"] = float(found.group(1)) if found else None
    found = re.search(r"(\d+) requests in ([0-9.]+\w+), ([0-9.]+\w+) read", out)
    figures["requests"] = int(found.group(1)) if found else None
    figures["read"] = found.group(3) if found else None
    for pct in ("50", "75", "90", "99"):
        found = re.search(rf"^\s*{pct}(?:\.000)?%\s+(\S+)", out, re.M)
        figures[f"p{pct}"] = to_ms(found.group(1)) if found else None
    found = re.search(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", out)
    figures["max"] = to_ms(found.group(3)) if found else None
    found = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    figures["non2xx"] = int(found.group(1)) if found else 0
    found = re.search(r"Socket errors:(.*)", out)
    figures["socket_errors"] = found.group(1).strip() if found else "none"
    return figures


def concurrently(jobs, width):
    """Runs the callables `width` at a time, all released together per wave; results in order."""
    results = [None] * len(jobs)
    for wave in range(0, len(jobs), width):
        batch = jobs[wave:wave + width]
        barrier = threading.Barrier(len(batch))

        def go(index, job):
            barrier.wait()
            results[index] = job()

        with concurrent.futures.ThreadPoolExecutor(len(batch)) as pool:
            futures = [pool.submit(go, wave + i, job) for i, job in enumerate(batch)]
            for future in futures:
                future.result()
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", default=os.environ.get("CUBBI_DOCKER_HOST", "unix:///var/run/cubbi-docker.sock"))
    parser.add_argument("--cubbi", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "cubbi"))
    parser.add_argument("--runtime", choices=["sysbox-runc", "runc"], default="sysbox-runc")
    parser.add_argument("--sessions", type=int, default=50, help="sessions the service holds under load")
    parser.add_argument("--concurrent", type=int, default=20, help="creates at once, service and CLI")
    parser.add_argument("--duration", type=int, default=15, help="seconds of each wrk run")
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--wrk-connections", type=int, default=32)
    args = parser.parse_args()
    if args.sessions < args.concurrent:
        sys.exit("--sessions must be at least --concurrent")
    for tool in ("wrk", "docker"):
        if not shutil.which(tool):
            sys.exit(f"no `{tool}` on PATH (Debian: apt-get install -y {tool})")
    with open("/proc/sys/fs/inotify/max_user_instances") as f:
        if int(f.read()) < 1024:
            sys.exit("fs.inotify.max_user_instances is below 1024: dozens of sessions cannot boot; "
                     "raise it with `sysctl -w fs.inotify.max_user_instances=8192`")
    if args.runtime == "sysbox-runc":
        # Sysbox maps every container's root to one host uid, whose key quota all of them share;
        # each systemd service takes a session keyring, so at the kernel's default (200 keys,
        # 20000 bytes) about two dozen sessions boot and the rest fail with "join session
        # keyring: create session key: disk quota exceeded". The sysbox-ce package raises both.
        with open("/proc/sys/kernel/keys/maxkeys") as f, open("/proc/sys/kernel/keys/maxbytes") as g:
            maxkeys, maxbytes = int(f.read()), int(g.read())
        if maxkeys < 20000 or maxbytes < 1400000:
            sys.exit(f"kernel.keys.maxkeys {maxkeys} / maxbytes {maxbytes} are below what the sysbox-ce "
                     "package sets: Sysbox sessions beyond about two dozen fail with `create session key: "
                     "disk quota exceeded`; raise them with "
                     "`sysctl -w kernel.keys.maxkeys=20000 kernel.keys.maxbytes=1400000`")

    cubbi = os.path.abspath(args.cubbi)
    tmp = tempfile.mkdtemp(prefix="cubbi-bench-serve-")
    env = dict(os.environ, HOME=tmp, XDG_CONFIG_HOME=os.path.join(tmp, ".config"),
               CUBBI_DOCKER_HOST=args.endpoint, CUBBI_OWNER=OWNER)
    env.pop("RUST_LOG", None)
    docker = ["docker", "-H", args.endpoint]
    unsafe = args.runtime == "runc"
    cli_create = [cubbi, "session", "create", "--image", "base", "--no-connect",
                  "--runtime", args.runtime] + (["--unsafe-runc"] if unsafe else [])
    state_dir = os.path.join(tmp, "state")
    os.makedirs(state_dir)
    config = os.path.join(tmp, "service.toml")
    with open(config, "w") as f:
        f.write(f"allow_unsafe_runc = {'true' if unsafe else 'false'}\n\n"
                f"[docker]\nendpoint = \"{args.endpoint}\"\n\n"
                f"[ssh]\nbind = \"127.0.0.1\"\n\n"
                f"[limits]\nsessions_per_user = {max(100, args.sessions + 10)}\n")
    port = free_port()
    log_path = os.path.join(tmp, "serve.log")
    print(f"runtime {args.runtime}, sessions {args.sessions}, concurrent {args.concurrent}, "
          f"wrk -t{args.wrk_threads} -c{args.wrk_connections} -d{args.duration}s, endpoint {args.endpoint}, "
          f"{os.cpu_count()} CPUs, load average at start {open('/proc/loadavg').read().split()[0]}")
    print(f"cubbi {run([cubbi, '--version'], check=False).stdout.strip()}")

    rows = []  # (figure, value, baseline, ratio / target)
    service = None
    names = []
    log = open(log_path, "w")
    try:
        # 1. The service and its token.
        token = run([cubbi, "serve", "token", "create", "--user", USER, "--state-dir", state_dir], env).stdout.strip().split()[-1]
        started = time.perf_counter()
        service = subprocess.Popen([cubbi, "--endpoint", args.endpoint, "serve", "--config", config,
                                    "--listen", f"127.0.0.1:{port}", "--state-dir", state_dir],
                                   env=env, stdout=log, stderr=subprocess.STDOUT)
        api = Service(f"http://127.0.0.1:{port}", token)
        while True:
            status, _, _ = api.request("GET", "/healthz", auth=False, timeout=2)
            if status == 200:
                break
            if service.poll() is not None or time.perf_counter() - started > 60:
                raise RuntimeError(f"cubbi serve never answered /healthz:\n{open(log_path).read()[-3000:]}")
            time.sleep(0.02)
        up = time.perf_counter() - started
        status, body, _ = api.request("GET", "/v1/sessions")
        if status != 200:
            raise RuntimeError(f"GET /v1/sessions with the token: {status} {body}")
        time.sleep(1)
        idle_rss = rss_kib(service.pid)
        print(f"service pid {service.pid} on 127.0.0.1:{port}: /healthz after {ms(up)} ms, idle RSS {mib(idle_rss)}")
        rows.append(("start to /healthz 200", f"{ms(up)} ms", "", ""))
        rows.append(("RSS idle after start", mib(idle_rss), "", ""))

        def post(name):
            status, body, elapsed = api.request("POST", "/v1/sessions",
                                                {"image": "base", "name": name, "runtime": args.runtime})
            return status, body, elapsed

        def cli(name):
            start = time.perf_counter()
            result = run(cli_create + ["--name", name], env, check=False)
            return result.returncode, result.stderr.strip()[-500:], time.perf_counter() - start

        # Warm-ups (untimed): first-use costs (keys, data volumes, image layers) fall on no sample.
        status, body, elapsed = post("warm")
        if status != 201:
            raise RuntimeError(f"warm-up POST /v1/sessions: {status} {body}")
        api.request("DELETE", "/v1/sessions/warm")
        code, err, elapsed_cli = cli("warm")
        if code != 0:
            raise RuntimeError(f"warm-up cubbi session create: {err}")
        run([cubbi, "session", "close", "warm"], env)
        print(f"warm-up: service {ms(elapsed)} ms, CLI {ms(elapsed_cli)} ms")

        # 2a. Baseline: concurrent creates through the local CLI, then closed.
        n = args.concurrent
        t0 = time.perf_counter()
        cli_results = concurrently([lambda i=i: cli(f"cli{i}") for i in range(n)], n)
        cli_wall = time.perf_counter() - t0
        cli_ok = [elapsed for code, _, elapsed in cli_results if code == 0]
        cli_failures = [err for code, err, _ in cli_results if code != 0]
        cli_ports = set()
        for line in run(docker + ["ps", "--filter", f"label=io.cubbi.owner={OWNER}",
                                  "--format", "{{.Ports}}"], check=False).stdout.splitlines():
            cli_ports.update(re.findall(r":(\d+)->22/tcp", line))
        print(f"CLI: {n} concurrent `cubbi session create --no-connect`: {len(cli_ok)} ready, "
              f"{len(cli_ports)} distinct ports, batch wall {ms(cli_wall)} ms")
        print(f"  create-to-ready {dist(cli_ok)}")
        for err in cli_failures[:5]:
            print(f"  failure: {err}")
        t0 = time.perf_counter()
        run([cubbi, "session", "close", "--all"], env, check=False)
        print(f"  closed by `cubbi session close --all` in {ms(time.perf_counter() - t0)} ms")

        # 2b. The same through the service.
        t0 = time.perf_counter()
        results = concurrently([lambda i=i: post(f"s{i}") for i in range(n)], n)
        wall = time.perf_counter() - t0
        created = [(body, elapsed) for status, body, elapsed in results if status == 201]
        names += [body["name"] for body, _ in created]
        ready = [elapsed for _, elapsed in created]
        ports = {body["ssh"]["port"] for body, _ in created}
        server_errors = [(status, body) for status, body, _ in results if status is not None and status >= 500]
        others = [(status, body) for status, body, _ in results if status != 201 and (status is None or status < 500)]
        print(f"service: {n} concurrent POST /v1/sessions: {len(created)} x 201, {len(ports)} distinct ports, "
              f"{len(server_errors)} x 5xx, {len(others)} other, batch wall {ms(wall)} ms")
        print(f"  create-to-ready {dist(ready)}")
        for status, body in (server_errors + others)[:5]:
            print(f"  failure: {status} {json.dumps(body)[:400] if not isinstance(body, str) else body[:400]}")
        ratio = statistics.median(ready) / statistics.median(cli_ok) if ready and cli_ok else None
        wall_ratio = wall / cli_wall
        print(f"  ratio service/CLI: median {'n/a' if ratio is None else f'{ratio:.2f}'}, batch wall {wall_ratio:.2f}")
        rows.append((f"{n} concurrent creates: 201 / distinct ports / 5xx",
                     f"{len(created)} / {len(ports)} / {len(server_errors)}",
                     f"CLI: {len(cli_ok)} ok / {len(cli_ports)} ports", f"want {n} / {n} / 0"))
        rows.append(("  create-to-ready median", f"{ms(statistics.median(ready))} ms" if ready else "n/a",
                     f"{ms(statistics.median(cli_ok))} ms" if cli_ok else "n/a",
                     f"x{ratio:.2f}" if ratio else ""))
        rows.append(("  create-to-ready p95", f"{ms(percentile(ready, 95))} ms" if ready else "n/a",
                     f"{ms(percentile(cli_ok, 95))} ms" if cli_ok else "n/a",
                     f"x{percentile(ready, 95) / percentile(cli_ok, 95):.2f}" if ready and cli_ok else ""))
        rows.append(("  create-to-ready max", f"{ms(max(ready))} ms" if ready else "n/a",
                     f"{ms(max(cli_ok))} ms" if cli_ok else "n/a",
                     f"x{max(ready) / max(cli_ok):.2f}" if ready and cli_ok else ""))
        rows.append(("  batch wall time", f"{ms(wall)} ms", f"{ms(cli_wall)} ms", f"x{wall_ratio:.2f}"))

        # 3. Grow to --sessions, 10 at a time.
        more = args.sessions - len(names)
        t0 = time.perf_counter()
        grown = concurrently([lambda i=i: post(f"g{i}") for i in range(more)], 10) if more > 0 else []
        grow_wall = time.perf_counter() - t0
        grow_ok = [elapsed for status, body, elapsed in grown if status == 201]
        names += [body["name"] for status, body, _ in grown if status == 201]
        for status, body, _ in [r for r in grown if r[0] != 201][:5]:
            print(f"  grow failure: {status} {json.dumps(body)[:400] if not isinstance(body, str) else body[:400]}")
        status, listed, _ = api.request("GET", "/v1/sessions")
        listed_n = len(listed) if status == 200 else None
        all_ports = {s["ssh"]["port"] for s in listed} if status == 200 else set()
        print(f"grow: {len(grow_ok)}/{more} more created (10 at a time) in {ms(grow_wall)} ms, "
              f"create-to-ready {dist(grow_ok)}")
        print(f"GET /v1/sessions lists {listed_n} sessions ({len(all_ports)} distinct ports)")
        rows.append((f"grow by {more}, 10 at a time: 201s", f"{len(grow_ok)}/{more}", "", ""))
        rows.append(("  create-to-ready median / p95",
                     f"{ms(statistics.median(grow_ok))} / {ms(percentile(grow_ok, 95))} ms" if grow_ok else "n/a", "", ""))
        rows.append(("sessions listed / distinct ports", f"{listed_n} / {len(all_ports)}", "", ""))

        # 4. GET /v1/sessions under wrk, against GET /healthz.
        time.sleep(2)  # let the last boots settle
        rss_50 = rss_kib(service.pid)
        single = [api.request("GET", "/v1/sessions")[2] for _ in range(50)]
        print(f"RSS with {listed_n} sessions, idle: {mib(rss_50)}; one GET /v1/sessions from Python: "
              f"median {statistics.median(single) * 1000:.2f} ms")
        load = open("/proc/loadavg").read().split()[0]
        print(f"load average before wrk {load}")
        rows.append(("host load average before wrk", load, "", ""))
        with Sampler(service.pid) as health_sample:
            health = wrk(f"{api.base}/healthz", args.wrk_threads, args.wrk_connections, args.duration)
        with Sampler(service.pid) as list_sample:
            listing = wrk(f"{api.base}/v1/sessions", args.wrk_threads, args.wrk_connections, args.duration, token)
        for label, figures, sample in (("GET /healthz", health, health_sample),
                                       (f"GET /v1/sessions ({listed_n} sessions)", listing, list_sample)):
            print(f"wrk {label}: {figures['rps']:.0f} req/s, p50 {figures['p50']:.2f} ms, "
                  f"p90 {figures['p90']:.2f} ms, p99 {figures['p99']:.2f} ms, max {figures['max']:.2f} ms, "
                  f"{figures['requests']} requests, {figures['read']} read, non-2xx {figures['non2xx']}, "
                  f"socket errors {figures['socket_errors']}; service peak RSS {mib(sample.peak)}, "
                  f"CPU {'n/a' if sample.cpu_share is None else f'{sample.cpu_share * 100:.0f}%'} of one core")
        print("wrk output, GET /v1/sessions:\n" + "\n".join("  " + line for line in listing["raw"].splitlines()))
        rps_ok = listing["rps"] is not None and listing["rps"] >= TARGET_RPS
        p99_ok = listing["p99"] is not None and listing["p99"] <= TARGET_P99_MS
        rows.append((f"GET /v1/sessions req/s ({listed_n} sessions)", f"{listing['rps']:.0f}",
                     f"healthz {health['rps']:.0f}",
                     f"x{listing['rps'] / health['rps']:.2f}; target >= {TARGET_RPS}: {'met' if rps_ok else 'MISSED'}"))
        for pct in ("p50", "p90", "p99"):
            target = f"; target <= {TARGET_P99_MS:.0f} ms: {'met' if p99_ok else 'MISSED'}" if pct == "p99" else ""
            rows.append((f"  latency {pct}", f"{listing[pct]:.2f} ms", f"healthz {health[pct]:.2f} ms",
                         f"x{listing[pct] / health[pct]:.2f}{target}"))
        rows.append(("  non-2xx / socket errors", f"{listing['non2xx']} / {listing['socket_errors']}",
                     f"healthz {health['non2xx']} / {health['socket_errors']}", ""))
        rows.append((f"RSS with {listed_n} sessions, idle", mib(rss_50), "", ""))
        rows.append(("RSS peak during wrk (200 ms samples)", mib(list_sample.peak),
                     f"healthz {mib(health_sample.peak)}", ""))
        if list_sample.cpu_share is not None:
            rows.append(("service CPU during wrk (cores)", f"{list_sample.cpu_share:.2f}",
                         f"healthz {health_sample.cpu_share:.2f}", ""))

        # 5. Close everything, then SIGTERM.
        t0 = time.perf_counter()
        closed = concurrently([lambda name=name: api.request("DELETE", f"/v1/sessions/{name}") for name in names], 10)
        close_wall = time.perf_counter() - t0
        close_ok = [elapsed for status, _, elapsed in closed if status == 200]
        for status, body, _ in [r for r in closed if r[0] != 200][:5]:
            print(f"  close failure: {status} {body}")
        closed_names = {name for name, (status, _, _) in zip(names, closed) if status == 200}
        names = [name for name in names if name not in closed_names]
        status, listed, _ = api.request("GET", "/v1/sessions")
        left = len(listed) if status == 200 else None
        print(f"close: {len(close_ok)}/{len(closed)} DELETE 200 (10 at a time) in {ms(close_wall)} ms, "
              f"{dist(close_ok)}; sessions listed after: {left}")
        rows.append(("DELETE 200s, 10 at a time", f"{len(close_ok)}/{len(closed)}", "", ""))
        rows.append(("  DELETE median / p95 / wall",
                     f"{ms(statistics.median(close_ok))} / {ms(percentile(close_ok, 95))} / {ms(close_wall)} ms"
                     if close_ok else "n/a", "", ""))
        rows.append(("  sessions listed after closing", f"{left}", "", ""))
        t0 = time.perf_counter()
        service.send_signal(signal.SIGTERM)
        code = service.wait(timeout=60)
        stop = time.perf_counter() - t0
        print(f"SIGTERM: exited {code} after {ms(stop)} ms")
        rows.append(("SIGTERM to exit", f"{ms(stop)} ms (exit {code})", "", ""))

        width = max(len(row[0]) for row in rows)
        value_width = max(len(row[1]) for row in rows)
        base_width = max(len(row[2]) for row in rows)
        print(f"\nsummary (runtime {args.runtime}):")
        print(f"  {'figure':<{width}}  {'service':<{value_width}}  {'baseline':<{base_width}}  ratio / target")
        for figure, value, baseline, note in rows:
            print(f"  {figure:<{width}}  {value:<{value_width}}  {baseline:<{base_width}}  {note}")
    finally:
        if service is not None and service.poll() is None:
            for name in names:
                api.request("DELETE", f"/v1/sessions/{name}")
            service.send_signal(signal.SIGTERM)
            try:
                service.wait(timeout=30)
            except subprocess.TimeoutExpired:
                service.kill()
        log.close()
        if service is not None and service.returncode not in (0, None):
            print(f"cubbi serve log (tail):\n{open(log_path).read()[-3000:]}", file=sys.stderr)
        subprocess.run([cubbi, "session", "close", "--all"], env=env, capture_output=True)
        for owner in (OWNER, f"serve:{USER}"):
            ids = run(docker + ["ps", "-aq", "--filter", f"label=io.cubbi.owner={owner}"], check=False).stdout.split()
            if ids:
                run(docker + ["rm", "-fv", *ids], check=False)
            # The per-owner data volumes outlive sessions by design; the bench's owners are gone.
            volumes = run(docker + ["volume", "ls", "-q", "--filter", f"label=io.cubbi.owner={owner}"],
                          check=False).stdout.split()
            if volumes:
                run(docker + ["volume", "rm", *volumes], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
