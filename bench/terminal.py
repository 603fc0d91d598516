#!/usr/bin/env python3
"""Terminal and SSH-tunnel benchmark of `cubbi serve`: prints its figures beside the raw
baseline (plain OpenSSH to the session's own port) measured in the same run. Not a test:
nothing is asserted.

1. Starts `cubbi serve` (a config, state dir and token of its own) and creates one session
   through it with a key of the bench's own.
2. Keystroke round trip (--keys, 1,000): one byte typed, its echo read back, with the session's
   terminal in `stty -icanon` and `cat >/dev/null` reading: through the WebSocket terminal
   (`GET /v1/sessions/{id}/terminal`, Python `websockets`), through OpenSSH over the SSH tunnel
   (`ProxyCommand cubbi -r bench ssh-proxy ID`), and through plain OpenSSH (`ssh -tt`).
   Median and p99 of each, and the ratio to plain SSH.
3. Throughput: `cat` of a --mb (100) MB file made in the session, --repeat (3) times each:
   through the WebSocket terminal (until a marker after it), `ssh cat` over the tunnel, and
   `ssh cat` direct. Median MB/s of each, and the ratio to direct.

    bench/terminal.py --endpoint unix:///path/docker.sock [--runtime runc] [--keys 1000]
                      [--mb 100] [--repeat 3]

Use bench/terminal.sh to run it on a throwaway dockerd. Needs `websockets` (PyPI) and OpenSSH.
"""
import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from serve import Service, free_port, percentile, run  # the same helpers as bench/serve.py

try:
    from websockets.sync.client import connect as ws_connect
except ImportError:
    sys.exit("no `websockets`: pip install websockets")

USER = "bench"


def ms(seconds):
    return f"{seconds * 1000:.2f} ms"


def rtt_summary(samples):
    return statistics.median(samples), percentile(samples, 99)


def ssh_rtt(ssh_args, env, keys):
    """Keystroke echo round trips through `ssh -tt` (stdin and stdout are pipes)."""
    child = subprocess.Popen(ssh_args + ["-tt", "stty -icanon; echo READY$((1+1)); cat >/dev/null"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, bufsize=0)
    try:
        read_until(lambda: os.read(child.stdout.fileno(), 65536), b"READY2")
        samples = []
        for _ in range(keys):
            start = time.perf_counter()
            child.stdin.write(b"x")
            read_until(lambda: os.read(child.stdout.fileno(), 65536), b"x")
            samples.append(time.perf_counter() - start)
        return samples
    finally:
        child.kill()
        child.wait()


def read_until(read, wanted, limit=None):
    """Reads chunks until `wanted` shows up; the bytes read."""
    seen, total, tail = b"", 0, b""
    while True:
        try:
            chunk = read()
        except TimeoutError:
            raise RuntimeError(f"{wanted!r} never came; last bytes {tail[-300:]!r}") from None
        if not chunk:
            raise RuntimeError(f"the stream ended before {wanted!r}; last bytes {tail[-200:]!r}")
        total += len(chunk)
        tail = (tail + chunk)[-(len(wanted) + 4096):]
        if wanted in tail:
            return total
        if limit is not None and total > limit:
            raise RuntimeError(f"{wanted!r} never came within {limit} bytes")


class Terminal:
    def __init__(self, api, session_id, stack):
        ticket = api.request("POST", f"/v1/sessions/{session_id}/tickets", {"purpose": "terminal"})[1]["ticket"]
        url = api.base.replace("http://", "ws://") + f"/v1/sessions/{session_id}/terminal?run=shell&ticket={ticket}"
        self.ws = stack.enter_context(
            ws_connect(url, subprotocols=["cubbi.tty.v1"], max_size=1 << 20, compression=None))

    def read(self):
        while True:
            message = self.ws.recv(timeout=30)
            if isinstance(message, bytes):
                return message

    def type(self, data):
        self.ws.send(data)


def ws_rtt(terminal, keys):
    terminal.type(b"stty -icanon; echo READY$((1+1)); cat >/dev/null\r")
    read_until(terminal.read, b"READY2")
    samples = []
    for _ in range(keys):
        start = time.perf_counter()
        terminal.type(b"x")
        read_until(terminal.read, b"x")
        samples.append(time.perf_counter() - start)
    terminal.type(b"\x03")  # ^C ends the cat, and flushes what is typed before the prompt
    read_until(terminal.read, b"$ ")
    terminal.type(b"stty sane; echo BACK$((2+3))\r")
    read_until(terminal.read, b"BACK5")
    return samples


def ws_cat(terminal, size):
    start = time.perf_counter()
    terminal.type(b"cat /tmp/bench.big; echo DONE-$((40+2))\r")
    total = read_until(terminal.read, b"DONE-42")
    elapsed = time.perf_counter() - start
    if total < size:
        raise RuntimeError(f"the terminal carried {total} bytes of a {size}-byte file")
    return elapsed


def ssh_cat(ssh_args, env, size):
    start = time.perf_counter()
    child = subprocess.Popen(ssh_args + ["cat /tmp/bench.big"], stdout=subprocess.PIPE, env=env, bufsize=0)
    total = 0
    while True:
        chunk = os.read(child.stdout.fileno(), 1 << 20)
        if not chunk:
            break
        total += len(chunk)
    child.wait()
    elapsed = time.perf_counter() - start
    if total != size:
        raise RuntimeError(f"ssh cat carried {total} bytes of {size}")
    return elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", default=os.environ.get("CUBBI_DOCKER_HOST", "unix:///var/run/cubbi-docker.sock"))
    parser.add_argument("--cubbi", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "cubbi"))
    parser.add_argument("--runtime", choices=["sysbox-runc", "runc"], default="sysbox-runc")
    parser.add_argument("--keys", type=int, default=1000, help="keystrokes per round-trip figure")
    parser.add_argument("--mb", type=int, default=100, help="size of the file `cat` prints, in MB")
    parser.add_argument("--repeat", type=int, default=3, help="cat runs per figure")
    args = parser.parse_args()

    cubbi = os.path.abspath(args.cubbi)
    tmp = tempfile.mkdtemp(prefix="cubbi-bench-terminal-")
    env = dict(os.environ, HOME=tmp, XDG_CONFIG_HOME=os.path.join(tmp, ".config"),
               XDG_DATA_HOME=os.path.join(tmp, ".local/share"))
    for name in ("RUST_LOG", "CUBBI_DOCKER_HOST", "DBUS_SESSION_BUS_ADDRESS"):
        env.pop(name, None)
    unsafe = args.runtime == "runc"
    state_dir = os.path.join(tmp, "state")
    os.makedirs(state_dir)
    config = os.path.join(tmp, "service.toml")
    with open(config, "w") as f:
        f.write(f"allow_unsafe_runc = {'true' if unsafe else 'false'}\n\n"
                f"[docker]\nendpoint = \"{args.endpoint}\"\n\n[ssh]\nbind = \"127.0.0.1\"\n")
    port = free_port()
    log_path = os.path.join(tmp, "serve.log")
    print(f"runtime {args.runtime}, {args.keys} keystrokes, {args.mb} MB x {args.repeat}, "
          f"{os.cpu_count()} CPUs, load average at start {open('/proc/loadavg').read().split()[0]}")
    service, session_id = None, None
    log = open(log_path, "w")
    stack = contextlib.ExitStack()
    try:
        token = run([cubbi, "serve", "token", "create", "--user", USER, "--state-dir", state_dir],
                    env).stdout.strip().split()[-1]
        service = subprocess.Popen([cubbi, "--endpoint", args.endpoint, "serve", "--config", config,
                                    "--listen", f"127.0.0.1:{port}", "--state-dir", state_dir],
                                   env=env, stdout=log, stderr=subprocess.STDOUT)
        api = Service(f"http://127.0.0.1:{port}", token)
        deadline = time.perf_counter() + 60
        while api.request("GET", "/healthz", auth=False, timeout=2)[0] != 200:
            if service.poll() is not None or time.perf_counter() > deadline:
                raise RuntimeError(f"cubbi serve never answered /healthz:\n{open(log_path).read()[-3000:]}")
            time.sleep(0.05)

        key = os.path.join(tmp, "id_bench")
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key])
        public = open(key + ".pub").read().strip()
        status, session, _ = api.request("POST", "/v1/sessions", {
            "image": "base", "name": "bench-tty", "runtime": args.runtime, "public_key": public})
        if status != 201:
            raise RuntimeError(f"POST /v1/sessions: {status} {session}")
        session_id = session["id"]
        ssh = session["ssh"]
        known = os.path.join(tmp, "known_hosts")
        with open(known, "w") as f:
            f.write(f"[127.0.0.1]:{ssh['port']} {ssh['host_key']}\nbench-tty {ssh['host_key']}\n")
        common = ["ssh", "-i", key, "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={known}",
                  "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
                  "-o", "BatchMode=yes", "-o", "ControlMaster=no", "-o", "ControlPath=none"]
        direct = common + ["-p", str(ssh["port"]), f"{ssh['user']}@127.0.0.1"]
        run([cubbi, "remote", "add", "bench", api.base], env)
        subprocess.run([cubbi, "-r", "bench", "auth"], input=token + "\n", env=env, text=True,
                       check=True, capture_output=True)
        tunnel = common + ["-o", f"ProxyCommand={cubbi} -r bench ssh-proxy {session_id}",
                           "-o", "HostKeyAlias=bench-tty", f"{ssh['user']}@bench-tty"]
        size = args.mb * 1000 * 1000
        run(direct + [f"head -c {size} /dev/urandom | base64 -w 99 | head -c {size} > /tmp/bench.big"], env)

        rtt = {}
        terminal = Terminal(api, session_id, stack)
        rtt["WebSocket terminal"] = ws_rtt(terminal, args.keys)
        rtt["ssh over the tunnel"] = ssh_rtt(tunnel, env, args.keys)
        rtt["ssh direct"] = ssh_rtt(direct, env, args.keys)
        base_median, base_p99 = rtt_summary(rtt["ssh direct"])
        print(f"\nkeystroke round trip ({args.keys} keys)        median       p99   ratio (median, p99)")
        for name, samples in rtt.items():
            median, p99 = rtt_summary(samples)
            print(f"  {name:<32} {ms(median):>10} {ms(p99):>10}   "
                  f"x{median / base_median:.2f}, x{p99 / base_p99:.2f}")

        cat = {"WebSocket terminal": [], "ssh over the tunnel": [], "ssh direct": []}
        for _ in range(args.repeat):
            cat["WebSocket terminal"].append(ws_cat(terminal, size))
            cat["ssh over the tunnel"].append(ssh_cat(tunnel, env, size))
            cat["ssh direct"].append(ssh_cat(direct, env, size))
        base = statistics.median(cat["ssh direct"])
        print(f"\ncat of {args.mb} MB (median of {args.repeat})       seconds      MB/s   ratio to direct")
        for name, times in cat.items():
            median = statistics.median(times)
            print(f"  {name:<32} {median:>9.2f} {args.mb / median:>9.1f}   x{median / base:.2f} the time")
    finally:
        stack.close()
        if service is not None and service.poll() is None:
            if session_id:
                api.request("DELETE", f"/v1/sessions/{session_id}")
            service.send_signal(signal.SIGTERM)
            try:
                service.wait(timeout=30)
            except subprocess.TimeoutExpired:
                service.kill()
        log.close()
        if service is not None and service.returncode not in (0, None, -signal.SIGTERM):
            print(f"cubbi serve log (tail):\n{open(log_path).read()[-3000:]}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
