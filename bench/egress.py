#!/usr/bin/env python3
"""The latency cubbi's egress resolver adds, measured from inside two sessions of one run.

An open session and an allow-list session (`--allow-domain allowed.test`) each send N DNS
queries over UDP to the internet's resolver: the open one reaches it directly (the baseline), the
allow-list one is redirected by the kernel to cubbi's resolver, which checks the name, forwards
it, and tells the kernel the answer's address before it replies. "held" asks one name N times
(its address is in the kernel already, so cubbi's resolver only checks and forwards); "new
addr" asks N names with N addresses (each answer is one `nft` transaction before the reply;
cubbi's resolver keeps no answer cache, the upstream's cache serves both sessions alike). Then N TCP connects
to the allowed address: what the kernel's set lookup adds to connection setup.

The client runs in the session's network namespace (nsenter), so its packets take the session's
path through the bridge and the host's rules, and the session image needs no Python.

Prints median and p99 per case and the ratio to the open session.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time

def cubbi(args, endpoint, binary):
    return subprocess.run(
        [binary, "--endpoint", endpoint, *args], check=True, capture_output=True, text=True
    ).stdout

CLIENT = r"""
import json, socket, struct, sys, time
mode, server, target, n, names = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5:]
out = []
def q(name, ident):
    header = struct.pack(">HHHHHH", ident, 0x0100, 1, 0, 0, 0)
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return header + labels + b"\x00" + struct.pack(">HH", 1, 1)
if mode == "dns":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    for i in range(n):
        name = names[i % len(names)]
        start = time.perf_counter()
        s.sendto(q(name, i & 0xFFFF), (server, 53))
        while True:
            data, _ = s.recvfrom(4096)
            if struct.unpack(">H", data[:2])[0] == i & 0xFFFF:
                break
        out.append(time.perf_counter() - start)
        if data[3] & 0x0F != 0:
            sys.exit("rcode %d for %s" % (data[3] & 0x0F, name))
else:
    # An allowed address stays allowed for the answer's TTL plus the grace (30 s here): look
    # the name up again (untimed) every 10 s, as a client whose cache runs out would.
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    looked = 0.0
    for i in range(n):
        if time.monotonic() - looked > 10:
            s.sendto(q(names[0], 1), (server, 53))
            s.recvfrom(4096)
            looked = time.monotonic()
        start = time.perf_counter()
        c = socket.create_connection((target, 80), timeout=3)
        out.append(time.perf_counter() - start)
        c.close()
print(json.dumps(out))
"""

def measure(label, pid, mode, upstream, target, n, names):
    ran = subprocess.run(
        ["nsenter", "-t", str(pid), "-n", sys.executable, "-c", CLIENT, mode, upstream, target,
         str(n), *names],
        capture_output=True, text=True,
    )
    if ran.returncode != 0:
        sys.exit("%s from pid %d (%s) failed: %s" % (mode, pid, label, ran.stderr.strip()[-2000:]))
    return json.loads(ran.stdout)

def summary(samples):
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered) * 1000, p99 * 1000

def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--cubbi", required=True)
    parser.add_argument("--runtime", default="runc")
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--table", required=True, help="the resolver's nft table")
    args = parser.parse_args()
    if args.n > 5000:
        sys.exit("-n is at most 5000 (the names bench/egress.sh gives addresses)")
    runtime = ["--runtime", args.runtime] + (["--unsafe-runc"] if args.runtime == "runc" else [])
    common = ["session", "create", "--image", "base", "--no-connect", "--no-mount", *runtime]
    sessions = {"open": [], "allow-list": ["--allow-domain", "allowed.test", "--no-image-domains"]}
    pids = {}
    for name, extra in sessions.items():
        session = "bench-egress-" + name.replace("-", "")
        cubbi([*common, "--name", session, *extra], args.endpoint, args.cubbi)
        inspect = subprocess.run(
            ["docker", "-H", args.endpoint, "inspect", "-f", "{{.State.Pid}}", "cubbi-" + session],
            check=True, capture_output=True, text=True,
        )
        pids[name] = int(inspect.stdout.strip())
    # The resolver picks a new session up within a second: wait until the kernel holds it.
    inspect = subprocess.run(
        ["docker", "-H", args.endpoint, "inspect", "-f",
         "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", "cubbi-bench-egress-allowlist"],
        check=True, capture_output=True, text=True,
    )
    address = inspect.stdout.strip()
    for _ in range(100):
        listed = subprocess.run(["nft", "list", "set", "ip", args.table, "restricted"],
                                capture_output=True, text=True).stdout
        if address in listed:
            break
        time.sleep(0.2)
    else:
        sys.exit("the resolver never held %s" % address)
    cached = ["allowed.test"]
    results = {}
    for name, pid in pids.items():
        fresh = ["u%d.allowed.test" % i for i in range(args.n)]
        results[name] = {
            "lookup, held": measure(name, pid, "dns", args.upstream, args.target, args.n, cached),
            "lookup, new addr": measure(name, pid, "dns", args.upstream, args.target, args.n, fresh),
            "connect": measure(name, pid, "connect", args.upstream, args.target, args.n, cached),
        }
    print("%-18s %12s %12s %14s %14s %8s" % ("case", "open med ms", "open p99 ms",
                                            "allow med ms", "allow p99 ms", "ratio"))
    for case in results["open"]:
        open_median, open_p99 = summary(results["open"][case])
        list_median, list_p99 = summary(results["allow-list"][case])
        print("%-18s %12.3f %12.3f %14.3f %14.3f %7.2fx" % (
            case, open_median, open_p99, list_median, list_p99, list_median / open_median))
    for name in sessions:
        session = "bench-egress-" + name.replace("-", "")
        subprocess.run([args.cubbi, "--endpoint", args.endpoint, "session", "close", session],
                       capture_output=True)

if __name__ == "__main__":
    main()
