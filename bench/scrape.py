"""A scrape at a full flow table, and the memory of `sluice validate` and `sluice run` on a large policy.

Run as root:  .venv/bin/python bench/scrape.py [--domains 1000000] [--scrapes 5]

1. Loads the data plane, fills its flow table to capacity (SLUICE_FLOW_MAX
   distinct keys, written in batches from user space: the scrape reads the
   same map whatever wrote it), and times a whole /metrics collection the
   way `sluice run` serves it (the flow count from the controller's last
   snapshot) and the way a source without that count gets it (counting
   the table in the scrape), median of --scrapes; and the snapshot's own
   count of the full table (batched lookups, Datapath.flow_count).
2. Writes a policy whose one rule lists --domains names in a domains_file
   and reports the peak RSS of `sluice validate` on it (the process's own
   maximum resident set, from wait4), and of `sluice run` with it on a veth
   in a namespace of its own, once it serves metrics (VmHWM).
"""

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sluice.abi import ABI  # noqa: E402
from sluice.datapath import Datapath  # noqa: E402
from sluice.metrics import SluiceCollector  # noqa: E402
from sluice.policy import load_policy  # noqa: E402

POLICY = "version: 1\nrules:\n  - {name: blocker, action: block, domains: [blocked.example]}\n"
MiB = 1024 * 1024


def fill_flow_table(datapath) -> int:
    flows = datapath.table("flows")
    count = ABI.SLUICE_FLOW_MAX
    keys = (flows.Key * count)()
    values = (flows.Leaf * count)()
    for index in range(count):
        key = keys[index]                               # struct flow_id of an IPv4 flow, as the program writes it
        key.lo = int.from_bytes(bytes([192, 0, 2, index & 0xFF]), sys.byteorder)
        key.hi = int.from_bytes(bytes([198, 51, 100, 2]), sys.byteorder)
        key.port_lo = index >> 8
        key.port_hi = 443
    flows.items_update_batch(keys, values)
    return datapath.flow_count()


def time_scrapes(source, scrapes: int) -> float:
    times = []
    for _ in range(scrapes):
        started = time.perf_counter()
        list(SluiceCollector(source).collect())
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def validate_peak_rss(domains: int) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of `sluice validate` on a policy of `domains` names."""
    with tempfile.TemporaryDirectory() as directory:
        policy = write_feed_policy(directory, domains)
        started = time.monotonic()
        process = subprocess.Popen([sys.executable, "-m", "sluice", "--max-input-size", "1GiB",
                                    "validate", str(policy)], stdout=subprocess.DEVNULL)
        _pid, status, usage = os.wait4(process.pid, 0)
        seconds = time.monotonic() - started
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"validate failed with status {status}")
        return usage.ru_maxrss / 1024, seconds


def write_feed_policy(directory: str, domains: int) -> Path:
    feed = Path(directory) / "feed.txt"
    with feed.open("w") as out:
        for index in range(domains):
            out.write(f"host{index}.feed{index % 1000}.example\n")
    policy = Path(directory) / "policy.yaml"
    policy.write_text("version: 1\nrules:\n  - {name: feed, action: block, domains_file: feed.txt}\n")
    return policy


def run_peak_rss(domains: int, port: int = 19473) -> tuple[float, float]:
    """(peak RSS in MiB, seconds until it serves metrics) of `sluice run` on a
    policy of `domains` names, on a veth in a namespace made for it."""
    tag = f"sluice-bench-{os.getpid()}"
    env = dict(os.environ, SLUICE_PIN_ROOT=f"/sys/fs/bpf/{tag}", SLUICE_STATE_FILE=f"/run/{tag}.json")
    subprocess.run(["ip", "netns", "add", tag], check=True)
    process = None
    try:
        subprocess.run(["ip", "-n", tag, "link", "add", "bench0", "type", "veth", "peer", "name", "bench1"],
                       check=True)
        subprocess.run(["ip", "-n", tag, "link", "set", "bench0", "up"], check=True)
        with tempfile.TemporaryDirectory() as directory:
            policy = write_feed_policy(directory, domains)
            started = time.monotonic()
            process = subprocess.Popen([sys.executable, "-m", "sluice", "--max-input-size", "1GiB",
                                        "run", "--policy", str(policy), "--netns", tag, "--iface", "bench0",
                                        "--metrics-address", "127.0.0.1", "--metrics-port", str(port)],
                                       env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            while True:
                if process.poll() is not None:
                    raise SystemExit(f"sluice run failed: {process.stderr.read().strip()}")
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
                    break
                except OSError:
                    time.sleep(0.5)
            seconds = time.monotonic() - started
            status = Path(f"/proc/{process.pid}/status").read_text()
            peak_kib = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
            return peak_kib / 1024, seconds
    finally:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
        subprocess.run(["ip", "netns", "delete", tag], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domains", type=int, default=1_000_000)
    parser.add_argument("--scrapes", type=int, default=5)
    args = parser.parse_args()
    print(f"# bench/scrape.py, {time.strftime('%Y-%m-%d %H:%M:%S')}, kernel {os.uname().release}")
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "policy.yaml"
        path.write_text(POLICY)
        policy = load_policy(path)
    datapath = Datapath(policy)
    try:
        source = SimpleNamespace(datapath=datapath, policy=policy, loaded_at=time.time(), policy_digest="",
                                 reloads={"success": 0, "failure": 0}, flow_entries=None)
        empty_count = time_scrapes(source, args.scrapes)
        entries = fill_flow_table(datapath)
        started = time.perf_counter()
        source.flow_entries = datapath.flow_count()       # what Service.snapshot does every 5 s
        snapshot = time.perf_counter() - started
        counted = time_scrapes(source, args.scrapes)
        source.flow_entries = None
        counted_in_scrape = time_scrapes(source, args.scrapes)
    finally:
        datapath.close()
    print(f"flow table: {entries} of {ABI.SLUICE_FLOW_MAX} entries")
    print(f"scrape, empty table, counting it:       {empty_count * 1000:8.1f} ms")
    print(f"scrape, full table, snapshot's count:   {counted * 1000:8.1f} ms   (sluice run)")
    print(f"scrape, full table, counting it:        {counted_in_scrape * 1000:8.1f} ms")
    print(f"the snapshot's count of a full table:   {snapshot * 1000:8.1f} ms   (every 5 s, in the controller)")
    rss, seconds = validate_peak_rss(args.domains)
    print(f"validate, {args.domains} domains: peak RSS {rss:.0f} MiB, {seconds:.1f} s")
    rss, seconds = run_peak_rss(args.domains)
    print(f"run, {args.domains} domains: peak RSS {rss:.0f} MiB, serving metrics after {seconds:.1f} s")


if __name__ == "__main__":
    main()
