"""How long a live policy reload takes, by policy size, with sluice attached in the lab.

Run as root:  .venv/bin/python bench/reload.py [--sizes 10,100000,1000000]

For each size it starts `Service` on the lab's edge with a 10-rule policy,
then replaces the policy with one naming N domains and times reload():
loading and validating the policy, filling the spare generation of the
policy maps, and the switch to it, as a user's SIGHUP would trigger it. The
baseline is the reload of the 10-rule policy. The CPU seconds (user and
system, this process's) are what the reload cost; on a shared machine they
say more than the wall-clock seconds, which include waiting for a CPU.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# Pins and lock of the bench's own, never a deployed sluice's (nor another bench's).
os.environ.setdefault("SLUICE_PIN_ROOT", f"/sys/fs/bpf/sluice-bench-{os.getpid()}")
os.environ.setdefault("SLUICE_STATE_FILE", f"/run/sluice-bench-{os.getpid()}/state.json")
from sluice.lab import Lab  # noqa: E402
from sluice.service import Service  # noqa: E402


def write_policy(path: Path, names: int) -> None:
    feed = path.parent / "feed.txt"
    feed.write_text("".join(f"host{i}.bench-{i % 997}.example\n" for i in range(names)))
    path.write_text("version: 1\nrules:\n  - {name: feed, action: block, domains_file: feed.txt}\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,100000,1000000")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Lab() as lab:
        policy = Path(tmp) / "policy.yaml"
        write_policy(policy, 10)
        service = Service(str(policy), [lab.edge_client_iface, lab.edge_server_iface], netns=lab.edge_ns)
        service.start(service.check())
        try:
            baseline = None
            for size in (int(s) for s in args.sizes.split(",")):
                write_policy(policy, size)
                started, cpu_started = time.monotonic(), time.process_time()
                assert service.reload()
                seconds, cpu = time.monotonic() - started, time.process_time() - cpu_started
                baseline = baseline or seconds
                print(f"reload to {size:>8} domain rules: {seconds:6.2f} s  ({seconds / baseline:5.1f}x the first), "
                      f"{cpu:6.2f} s of CPU", flush=True)
        finally:
            service.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
