"""Where a new connection's CPU goes at tc ingress: sluice's own BPF time per
connection (kernel.bpf_stats_enabled, run_time_ns of the entry program, which
includes its tail calls) against the machine's busy CPU per connection
(/proc/stat), for no program, the empty tc program and sluice with 1M rules,
twice each, and the edge links' state (qdiscs, egress filters, offloads,
rp_filter) under each program. Not paired: it explains the paired churn gap
of bench/forwarding.py, it does not measure it.

Run as root:  .venv/bin/python bench/churn_cpu.py [--rules 1000000]
"""
import argparse, json, subprocess, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import forwarding as f  # noqa: E402
from sluice.datapath import Datapath  # noqa: E402
from sluice.lab import Lab  # noqa: E402
from sluice.policy import load_policy  # noqa: E402


def rule_policy(directory: Path, rules: int):
    """forwarding.py's policy with `rules` block names instead of 1M: what the rule tables' size costs."""
    (directory / "feed.txt").write_text("\n".join(f.bench_names(rules)) + "\n")
    (directory / "policy.yaml").write_text(
        "version: 1\nrules:\n  - {name: feed, action: block, domains_file: feed.txt}\n"
        "  - {name: slow, action: throttle, rate: 10mbit, domains: [slow.example]}\n")
    return load_policy(directory / "policy.yaml")

def busy_jiffies():
    v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return sum(v) - v[3] - v[4], sum(v)   # busy jiffies, total

def progs():
    out = json.loads(subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True).stdout)
    return {p["id"]: (p.get("name"), p.get("run_time_ns", 0), p.get("run_cnt", 0)) for p in out}

def state(lab, tag):
    for ifn in (lab.edge_client_iface, lab.edge_server_iface):
        for cmd in (["tc", "qdisc", "show", "dev", ifn], ["tc", "filter", "show", "dev", ifn, "egress"],
                    ["ip", "-d", "link", "show", ifn], ["ethtool", "-k", ifn]):
            r = lab.run_in(lab.edge_ns, cmd)
            print(f"[{tag}] {' '.join(cmd)}\n{r.stdout.strip()}")
    r = lab.run_in(lab.edge_ns, ["sh", "-c", "sysctl -a 2>/dev/null | grep -E 'rp_filter|forwarding' | sort"])
    print(f"[{tag}] sysctl\n{r.stdout.strip()}")

def measured(lab, tag):
    before, (b0, t0), t = progs(), busy_jiffies(), time.time()
    rate = f.churn(lab)
    after, (b1, t1), el = progs(), busy_jiffies(), time.time() - t
    busy_ns = (b1 - b0) * 1e7  # USER_HZ 100
    bpf = {i: (after[i][0], after[i][1] - before.get(i, (0, 0, 0))[1], after[i][2] - before.get(i, (0, 0, 0))[2])
           for i in after if after[i][2] != before.get(i, (0, 0, 0))[2]}
    bpf_ns = sum(v[1] for v in bpf.values())
    print(f"{tag}: {rate:.0f} conn/s, {f.CHURN_REQUESTS} conns in {el:.2f}s; machine busy {busy_ns/1e6:.0f} ms "
          f"= {busy_ns/f.CHURN_REQUESTS/1e3:.1f} us/conn; BPF programs that ran: "
          + "; ".join(f"{n} {ns/1e6:.1f} ms over {c} runs ({ns/max(c,1):.0f} ns/run)" for n, ns, c in bpf.values())
          + f"; total BPF {bpf_ns/f.CHURN_REQUESTS/1e3:.2f} us/conn = {100*bpf_ns/busy_ns:.1f}% of busy CPU", flush=True)

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--rules", type=int, default=1_000_000, help="block names in the policy (default %(default)s)")
args = parser.parse_args()
if args.rules < 1:
    parser.error("--rules must be at least 1")
subprocess.run(["sysctl", "-qw", "kernel.bpf_stats_enabled=1"])
try:
    with tempfile.TemporaryDirectory() as tmp, Lab() as lab:
        t = time.time(); datapath = Datapath(rule_policy(Path(tmp), args.rules)); print(f"loaded in {time.time()-t:.0f}s", flush=True)
        try:
            for rnd in range(2):
                measured(lab, "no program")
                with f.empty_tc(lab):
                    if rnd == 0: state(lab, "empty tc")
                    measured(lab, "empty tc")
                with f.sluice_attached(lab, datapath, "tc"):
                    if rnd == 0: state(lab, "sluice tc")
                    measured(lab, f"sluice tc {args.rules} rules")
        finally:
            datapath.close()
finally:
    subprocess.run(["sysctl", "-qw", "kernel.bpf_stats_enabled=0"])
