#!/usr/bin/env python3
"""Agent-run benchmarks: time from a run's start to the agent's first request at the model
server, and to the result, printed as medians with the overhead cubbi adds, all in one run:

1. warm:    `cubbi run --session S` in a ready session;
2. direct:  the tool's own CLI in that session through `cubbi session exec` (the baseline);
3. cold:    `cubbi run` creating (and closing) a session;
4. service: `POST /v1/runs` on a `cubbi serve` started here (a session per run, closed after).

The model is the tests' scripted server (`examples/model_server.rs`, built here), which
answers at once, so the figures are cubbi's and the tool's own time, not a model's.

Needs: root, a cubbi binary (default target/release/cubbi), docker, the tool image built on
the endpoint (`cubbi image build claude-code`), and cargo to build the model server.

    bench/runs.py --endpoint unix:///path/docker.sock [--runtime runc] [-n 5]
"""
import argparse
import json
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

OWNER = f"bench-runs-{os.getpid()}"
SECRET = "sk-bench-not-a-key"


def docker(endpoint, *args):
    return subprocess.run(["docker", "-H", endpoint, *args], check=True,
                          capture_output=True, text=True).stdout.strip()


class ModelServer:
    """The scripted model server; `requests` gets (time, path) for each request it sees."""

    def __init__(self, binary):
        self.process = subprocess.Popen([binary], stdout=subprocess.PIPE, text=True)
        first = self.process.stdout.readline().split()
        if first[:1] != ["port"]:
            sys.exit(f"model server: unexpected first line {first}")
        self.port = int(first[1])
        self.requests = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            parts = line.split()
            if parts[:1] == ["request"]:
                self.requests.put((time.monotonic(), parts[2]))

    def drain(self):
        while not self.requests.empty():
            self.requests.get_nowait()

    def first_request_after(self, started):
        """The time of the first model request (`/messages`) since the last drain."""
        while True:
            at, path = self.requests.get(timeout=300)
            if at >= started and path.endswith("/messages"):
                return at

    def stop(self):
        self.process.kill()


def timed(server, action):
    """(to first request, to result) in seconds for `action()`."""
    server.drain()
    started = time.monotonic()
    action()
    ended = time.monotonic()
    return server.first_request_after(started) - started, ended - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--cubbi", default=os.environ.get("CUBBI_BIN", "target/release/cubbi"))
    parser.add_argument("--runtime", default="sysbox-runc")
    parser.add_argument("--image", default="claude-code")
    parser.add_argument("-n", type=int, default=5)
    args = parser.parse_args()
    args.cubbi = os.path.abspath(args.cubbi)

    subprocess.run(["cargo", "build", "--release", "--example", "model_server", "--quiet"],
                   check=True)
    target = os.environ.get("CARGO_TARGET_DIR", "target")
    server = ModelServer(os.path.join(target, "release/examples/model_server"))
    network = f"cubbi-bench-runs-{os.getpid()}"
    docker(args.endpoint, "network", "create", network)
    gateway = docker(args.endpoint, "network", "inspect", network, "--format",
                     "{{(index .IPAM.Config 0).Gateway}}")
    base_url = f"http://{gateway}:{server.port}"
    home = tempfile.mkdtemp(prefix="cubbi-bench-runs-")
    env = dict(os.environ, HOME=home, XDG_CONFIG_HOME=f"{home}/.config",
               CUBBI_OWNER=OWNER, CUBBI_DOCKER_HOST=args.endpoint)
    runtime = ["--runtime", args.runtime] + (["--unsafe-runc"] if args.runtime == "runc" else [])
    secrets = ["-e", f"ANTHROPIC_API_KEY={SECRET}", "-e", f"ANTHROPIC_BASE_URL={base_url}"]
    session_flags = ["--image", args.image, "--no-mount", "--network", network, *runtime,
                     *secrets]

    def cubbi(*words):
        ran = subprocess.run([args.cubbi, *words], env=env, capture_output=True, text=True,
                             cwd=home)
        if ran.returncode != 0:
            sys.exit(f"cubbi {' '.join(words[:3])} failed: {ran.stderr.strip()}")
        return ran.stdout

    service = None
    figures = {}
    try:
        warm = "bench-warm"
        cubbi("session", "create", "--no-connect", "--name", warm, *session_flags)
        # One run each first, not counted: tool and disk caches, as a user's second run has.
        cubbi("run", "--session", warm, "-p", "warm up")
        figures["warm: cubbi run --session"] = [
            timed(server, lambda: cubbi("--json", "run", "--session", warm, "-p", "hello"))
            for _ in range(args.n)]
        direct = ["session", "exec", warm, "--", "sh", "-c",
                  "echo hello | claude -p --output-format json >/dev/null"]
        figures["direct: the tool's CLI via session exec"] = [
            timed(server, lambda: cubbi(*direct)) for _ in range(args.n)]
        cubbi("session", "close", warm)
        figures["cold: cubbi run (create, run, close)"] = [
            timed(server, lambda: cubbi("--json", "run", *session_flags, "-p", "hello"))
            for _ in range(args.n)]
        service, url, token = start_service(args, env, home, network)
        body = {"image": args.image, "prompt": "hello", "networks": [network],
                "runtime": args.runtime,
                "env": {"ANTHROPIC_API_KEY": SECRET, "ANTHROPIC_BASE_URL": base_url}}

        def post():
            request = urllib.request.Request(
                f"{url}/v1/runs", data=json.dumps(body).encode(), method="POST",
                headers={"Authorization": f"Bearer {token}",
                         "Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=600) as answer:
                result = json.load(answer)
            if result.get("is_error"):
                sys.exit(f"service run failed: {result}")
        figures["service: POST /v1/runs"] = [timed(server, post) for _ in range(args.n)]
    finally:
        if service:
            service.terminate()
            service.wait()
        subprocess.run([args.cubbi, "session", "close", "bench-warm"], env=env,
                       capture_output=True)
        server.stop()
        subprocess.run(["docker", "-H", args.endpoint, "network", "rm", network],
                       capture_output=True)
        shutil.rmtree(home, ignore_errors=True)

    print(f"agent runs of {args.image} under {args.runtime}, n={args.n}, medians:")
    print(f"{'':44} {'first request':>14} {'result':>9}")
    medians = {}
    for name, samples in figures.items():
        first = statistics.median(s[0] for s in samples)
        result = statistics.median(s[1] for s in samples)
        medians[name] = (first, result)
        print(f"{name:44} {first * 1000:11.0f} ms {result:7.2f} s")
    direct = medians["direct: the tool's CLI via session exec"][1]
    warm = medians["warm: cubbi run --session"][1]
    print(f"cubbi run overhead over the tool's own CLI in a warm session: "
          f"{(warm - direct) * 1000:.0f} ms ({warm / direct:.2f}x)")
    cold = medians["cold: cubbi run (create, run, close)"][1]
    service = medians["service: POST /v1/runs"][1]
    print(f"cold run vs warm run: {cold / warm:.1f}x; service vs cold CLI run: "
          f"{service / cold:.2f}x")


def start_service(args, env, home, network):
    """`cubbi serve` on a free port with its own state, a token, and the bench network."""
    state = os.path.join(home, "serve-state")
    config = os.path.join(home, "service.toml")
    with open(config, "w") as out:
        out.write(f'state_dir = "{state}"\nallow_unsafe_runc = true\n'
                  f'[server]\nhost = "127.0.0.1"\nport = 0\n'
                  f'[docker]\nendpoint = "{args.endpoint}"\n'
                  f'[ssh]\nbind = "127.0.0.1"\n'
                  f'[networks]\nallowed = ["{network}"]\n')
    token = subprocess.run([args.cubbi, "serve", "token", "create", "--user", "bench",
                            "--config", config], env=env, check=True, capture_output=True,
                           text=True).stdout.strip()
    service = subprocess.Popen([args.cubbi, "serve", "--config", config], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = None
    deadline = time.monotonic() + 60
    while url is None and time.monotonic() < deadline:
        line = service.stdout.readline()
        if "is listening" in line:
            # JSON log lines when stdout is not a terminal.
            url = "http://" + json.loads(line)["fields"]["address"]
    if url is None:
        service.kill()
        sys.exit("cubbi serve did not say where it listens")
    threading.Thread(target=lambda: service.stdout.read(), daemon=True).start()
    return service, url, token


if __name__ == "__main__":
    main()
