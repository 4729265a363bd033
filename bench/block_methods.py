"""How long a blocked client takes to fail, by block method, in the lab.

Run as root:  .venv/bin/python bench/block_methods.py [--runs 20] [--timeout 2] [--hook native]

sluice runs the lab policy on the lab's edge (reset-lab: method reset,
page-lab: method page, block-lab: method drop), with tc ingress set up to
reset servers as `sluice run` does. curl in the client namespace asks for
each name; the figure is curl's own time_total (no process start), as the
median and the worst of the runs, with what curl saw. A drop fails only at
curl's --max-time; an unblocked name is there for scale.
"""

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sluice.block_methods import set_up_server_resets  # noqa: E402
from sluice import hooks  # noqa: E402
from sluice.datapath import Datapath  # noqa: E402
from sluice.lab import Lab  # noqa: E402
from sluice.policies import lab_policy_path  # noqa: E402
from sluice.policy import load_policy  # noqa: E402

CASES = (("reset", "reset.example", "https"), ("page", "page.example", "http"),
         ("page over TLS", "page.example", "https"), ("drop", "blocked.example", "https"),
         ("not blocked", "open.example", "https"))
DROP_RUNS = 2           # each waits out the whole timeout


def time_curl(lab: Lab, name: str, scheme: str, timeout: float) -> tuple[float, str]:
    """curl's time_total in seconds, and its status code or error."""
    result = lab.run_in(lab.client_ns, ["curl", "-sS", "--max-time", str(timeout), "--cacert", lab.ca_path,
                                        *lab.resolve(name, scheme, 4), "-o", "/dev/null",
                                        "-w", "%{time_total} %{http_code}", f"{scheme}://{name}/"])
    seconds, code = result.stdout.split()
    return float(seconds), result.stderr.strip().removeprefix("curl: ") or f"HTTP {code}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=2.0, help="curl's --max-time, seconds")
    parser.add_argument("--hook", choices=hooks.CHOICES, default="native")
    args = parser.parse_args()
    policy = load_policy(lab_policy_path())
    with Lab() as lab:
        datapath = Datapath(policy)
        server_resets = []
        try:
            for ifname in lab.edge_ifaces:
                mode = datapath.attach(ifname, netns=lab.edge_ns, hook=args.hook)
            server_resets = set_up_server_resets(datapath, policy, [(i, lab.edge_ns) for i in lab.edge_ifaces])
            print(f"# {mode} XDP, servers reset from tc ingress: {'yes' if server_resets else 'no'}; "
                  f"curl --max-time {args.timeout:g} s")
            print(f"{'method':<15} {'url':<28} {'median ms':>10} {'worst ms':>9}  curl saw")
            for method, name, scheme in CASES:
                runs = [time_curl(lab, name, scheme, args.timeout)
                        for _ in range(DROP_RUNS if method == "drop" else args.runs)]
                times = [seconds * 1000 for seconds, _ in runs]
                print(f"{method:<15} {scheme + '://' + name:<28} {statistics.median(times):>10.1f} "
                      f"{max(times):>9.1f}  {runs[-1][1]}")
        finally:
            for hook in server_resets:
                hook.close()
            datapath.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
