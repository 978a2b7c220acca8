"""Plugin benchmark: 10,000 endpoint files (prints figures, asserts nothing; no root).

A temporary data directory holds a felix.txt with two hosts and N endpoint
files (endpoint i on host h1 or h2, in group g<i // group-size>).  The real
``calico-plugin ep`` and ``calico-plugin network`` processes serve it on
loopback; this script plays both Felixes (REP sockets that answer and
timestamp every message) and the ACL manager (a SUB socket).  It measures:

1. startup: process start to "serving on" in the log, and to the last of the
   N ENDPOINTCREATED the two Felixes receive;
2. idle CPU of each process over ``--idle-secs`` (utime + stime from
   /proc/<pid>/stat, as % of one core) while nothing changes;
3. one new endpoint file renamed into place (written under a hidden name,
   fsync'ed, then renamed; the clock starts at the rename): time until the
   Felix receives its ENDPOINTCREATED and until the ACL manager receives a
   GROUPUPDATE listing it, median / p95 / max over ``--changes`` files, one
   at a time; the new endpoints join group g000 (``--group-size`` members);
4. a burst of ``--burst`` new files renamed in at once (into a group of their
   own): time until the Felixes have every ENDPOINTCREATED and until a
   GROUPUPDATE lists every member;
5. in this process, without sockets (this tree's code only): one file
   renamed in to the StateChange that the APIs would send, through the real
   watcher (inotify) and store, over the same directory.

``--src DIR`` runs the calico package found in DIR instead of this tree's,
e.g. an export of an older commit for a before/after comparison:

    git archive <commit> | tar -x -C /tmp/plugin-base
    .venv/bin/python bench/plugin_bench.py --src /tmp/plugin-base

Run: ``.venv/bin/python bench/plugin_bench.py [--files 10000] [--idle-secs 20]``
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import zmq

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN = "127.0.77.1"   # a loopback range no test uses
FELIX = {"h1": "127.0.77.2", "h2": "127.0.77.3"}


def endpoint_text(eid: str, ip: str, host: str, group: str, mac: str) -> str:
    return f"[endpoint {eid}]\nid={eid}\nip={ip}\nmac={mac}\nhost={host}\ngroup={group}\n"


def nth_ip(n: int, base: int = 10) -> str:
    return f"{base}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def nth_mac(n: int) -> str:
    return "02:00:" + ":".join(f"{(n >> s) & 255:02x}" for s in (24, 16, 8, 0))


def rename_in(data_dir: str, name: str, text: str) -> float:
    """Write under a hidden name, fsync, rename into place; the rename's time."""
    tmp = os.path.join(data_dir, f".{name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    start = time.perf_counter()
    os.rename(tmp, os.path.join(data_dir, name))
    return start


class FakeFelix(threading.Thread):
    """A REP socket answering SUCCESS; first arrival time per (type, endpoint)."""

    def __init__(self, context: zmq.Context, address: str):
        super().__init__(daemon=True)
        self.sock = context.socket(zmq.REP)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(address)
        self.arrived: dict[tuple[str, str], float] = {}
        self.stopping = threading.Event()
        self.start()

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while not self.stopping.is_set():
            if not poller.poll(50):
                continue
            raw = self.sock.recv()
            now = time.perf_counter()
            msg = json.loads(raw)
            key = (msg.get("type"), msg.get("endpoint_id"))
            self.arrived.setdefault(key, now)
            self.sock.send(json.dumps({"type": msg.get("type"), "rc": "SUCCESS", "message": ""}).encode())
        self.sock.close(linger=0)

    def created(self, eid: str) -> float | None:
        return self.arrived.get(("ENDPOINTCREATED", eid))


class FakeAclManager(threading.Thread):
    """A SUB socket: first time each endpoint is listed in a GROUPUPDATE."""

    def __init__(self, context: zmq.Context, address: str):
        super().__init__(daemon=True)
        self.sock = context.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"groups")
        self.sock.setsockopt(zmq.SUBSCRIBE, b"networkheartbeat")
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.connect(address)
        self.listed: dict[str, float] = {}
        self.heartbeats = 0
        self.updates = 0
        self.stopping = threading.Event()
        self.start()

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while not self.stopping.is_set():
            if not poller.poll(50):
                continue
            topic, body = self.sock.recv_multipart()
            now = time.perf_counter()
            if topic == b"networkheartbeat":
                self.heartbeats += 1
                continue
            self.updates += 1
            for eid in json.loads(body)["members"]:
                self.listed.setdefault(eid, now)
        self.sock.close(linger=0)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for(condition, timeout: float, what: str, interval: float = 0.001):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"plugin_bench: timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def spread(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return f"median {statistics.median(ms):7.1f} ms   p95 {p95:7.1f} ms   max {ms[-1]:7.1f} ms"


class Plugin:
    def __init__(self, api: str, data_dir: str, work: str, src: str, extra: list[str]):
        self.log_path = os.path.join(work, f"plugin-{api}.log")
        env = dict(os.environ, PYTHONPATH=src)
        self.started = time.perf_counter()
        self.out = open(os.path.join(work, f"plugin-{api}.out"), "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "calico.plugin.main", api, "--data-dir", data_dir, "--bind", PLUGIN,
             "--log-file", self.log_path, *extra], cwd=src, env=env, stdout=self.out, stderr=subprocess.STDOUT)
        self.pid = self.process.pid

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except FileNotFoundError:
            return ""

    def wait_serving(self) -> float:
        wait_for(lambda: "serving on" in self.log() or self.process.poll() is not None, 120, "the plugin to serve")
        if self.process.poll() is not None:
            raise SystemExit(f"plugin exited: {open(self.out.name).read()}")
        return time.perf_counter() - self.started

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.out.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000, help="endpoint files (%(default)s)")
    parser.add_argument("--group-size", type=int, default=100, help="members per group (%(default)s)")
    parser.add_argument("--idle-secs", type=float, default=20.0, help="idle CPU window (%(default)s)")
    parser.add_argument("--changes", type=int, default=20, help="single changes timed (%(default)s)")
    parser.add_argument("--burst", type=int, default=1000, help="files in the burst (%(default)s)")
    parser.add_argument("--src", default=REPO, help="directory holding the calico package to run (this tree)")
    parser.add_argument("--plugin-arg", action="append", default=[],
                        help="extra argument for both plugin processes (repeatable)")
    args = parser.parse_args()
    src = os.path.abspath(args.src)

    work = tempfile.mkdtemp(prefix="plugin-bench-")
    data_dir = os.path.join(work, "data")
    os.mkdir(data_dir)
    with open(os.path.join(data_dir, "felix.txt"), "w") as handle:
        handle.write("".join(f"[felix {name}]\nip={ip}\nhost={name}\n\n" for name, ip in FELIX.items()))
    hosts = sorted(FELIX)
    for i in range(args.files):
        eid = f"ep{i:05d}"
        with open(os.path.join(data_dir, f"{eid}.txt"), "w") as handle:
            handle.write(endpoint_text(eid, nth_ip(i), hosts[i % 2], f"g{i // args.group_size:03d}", nth_mac(i)))
    print(f"plugin_bench: {args.files} endpoint files + felix.txt in {data_dir}; code from {src}")

    context = zmq.Context()
    felixes = {name: FakeFelix(context, f"tcp://{ip}:9902") for name, ip in FELIX.items()}
    plugins = {}
    try:
        plugins["ep"] = Plugin("ep", data_dir, work, src, args.plugin_arg)
        plugins["network"] = Plugin("network", data_dir, work, src, args.plugin_arg)
        for api, plugin in plugins.items():
            print(f"  {api:8s} start to 'serving on'                 {plugin.wait_serving():8.2f} s")
        acl = FakeAclManager(context, f"tcp://{PLUGIN}:9904")
        wait_for(lambda: acl.heartbeats, 30, "a network heartbeat (subscribed)")
        ids = [f"ep{i:05d}" for i in range(args.files)]
        felix_of = {eid: felixes[hosts[i % 2]] for i, eid in enumerate(ids)}
        wait_for(lambda: all(felix_of[eid].created(eid) for eid in ids[-50:]) and
                 sum(len(f.arrived) for f in felixes.values()) >= args.files, 300, "every ENDPOINTCREATED", 0.05)
        last = max(felix_of[eid].created(eid) for eid in ids)
        print(f"  ep       start to the last initial ENDPOINTCREATED {last - plugins['ep'].started:8.2f} s")

        time.sleep(2.0)  # let the start-up settle
        before = {api: cpu_seconds(p.pid) for api, p in plugins.items()}
        time.sleep(args.idle_secs)
        for api, plugin in plugins.items():
            used = cpu_seconds(plugin.pid) - before[api]
            print(f"  {api:8s} idle CPU over {args.idle_secs:g} s                  "
                  f"{100 * used / args.idle_secs:8.2f} % of one core")

        ep_times, net_times = [], []
        for k in range(args.changes):
            eid, n = f"lat{k:03d}", 100_000 + k
            start = rename_in(data_dir, f"{eid}.txt", endpoint_text(eid, nth_ip(n), "h1", "g000", nth_mac(n)))
            got_ep = wait_for(lambda: felixes["h1"].created(eid), 30, f"ENDPOINTCREATED {eid}")
            got_net = wait_for(lambda: acl.listed.get(eid), 30, f"GROUPUPDATE listing {eid}")
            ep_times.append(got_ep - start)
            net_times.append(got_net - start)
            time.sleep(0.25)
        print(f"  one file renamed in -> ENDPOINTCREATED at Felix  {spread(ep_times)}  ({args.changes} files)")
        print(f"  one file renamed in -> GROUPUPDATE at ACL mgr    {spread(net_times)}  (group of "
              f"{args.group_size})")

        burst = [f"burst{k:04d}" for k in range(args.burst)]
        for k, eid in enumerate(burst):
            n = 200_000 + k
            with open(os.path.join(data_dir, f".{eid}.tmp"), "w") as handle:
                handle.write(endpoint_text(eid, nth_ip(n), hosts[k % 2], "burst", nth_mac(n)))
        start = time.perf_counter()
        for eid in burst:
            os.rename(os.path.join(data_dir, f".{eid}.tmp"), os.path.join(data_dir, f"{eid}.txt"))
        renamed = time.perf_counter() - start
        felix_of = {eid: felixes[hosts[k % 2]] for k, eid in enumerate(burst)}
        wait_for(lambda: all(felix_of[eid].created(eid) for eid in burst), 120, "the burst's ENDPOINTCREATED", 0.005)
        wait_for(lambda: all(eid in acl.listed for eid in burst), 120, "the burst in a GROUPUPDATE", 0.005)
        ep_last = max(felix_of[eid].created(eid) for eid in burst) - start
        net_last = max(acl.listed[eid] for eid in burst) - start
        print(f"  burst of {args.burst} files (renames took {renamed * 1000:.0f} ms): last ENDPOINTCREATED "
              f"{ep_last * 1000:.0f} ms, last member in a GROUPUPDATE {net_last * 1000:.0f} ms")
        acl.stopping.set()
    finally:
        for plugin in plugins.values():
            plugin.stop()
        for felix in felixes.values():
            felix.stopping.set()
        time.sleep(0.2)
        context.destroy(linger=0)
    for api, plugin in plugins.items():
        watching = [line.split("] ", 1)[-1] for line in plugin.log().splitlines() if "data directory" in line]
        if watching:
            print(f"  {api:8s} log: {watching[0][:150]}")
    if src == REPO:
        in_process(data_dir, args.changes)
    subprocess.run(["rm", "-rf", work], check=False)


def in_process(data_dir: str, changes: int) -> None:
    from calico.common.zmqloop import EventLoop
    from calico.plugin.watcher import DataDirectory

    data = DataDirectory(data_dir)
    data.load()
    loop = EventLoop()
    seen: dict[str, float] = {}
    data.attach(loop, lambda state, change: [seen.setdefault(c.endpoint.endpoint_id, time.perf_counter())
                                             for c in change.endpoints])
    times = []
    try:
        for k in range(changes):
            eid, n = f"inproc{k:03d}", 300_000 + k
            start = rename_in(data_dir, f"{eid}.txt", endpoint_text(eid, nth_ip(n), "h1", "g000", nth_mac(n)))
            deadline = time.monotonic() + 30
            while eid not in seen and time.monotonic() < deadline:
                loop.run_once(0.05)
            times.append(seen[eid] - start)
    finally:
        data.close()
    print(f"  in process: one file renamed in -> StateChange   {spread(times)}  "
          f"({len(data.state.endpoints)} endpoints)")


if __name__ == "__main__":
    main()
