"""What each piece of a known flow's path costs, by BPF_PROG_TEST_RUN, over the floor program.

Run as root:  .venv/bin/python bench/packet_pieces.py [--repeat N] [--pairs N]

This machine has no PMU and Debian's bpftool has no `prog profile`, so the
cost of a piece is measured by adding it alone to bench/packet_cost.py's
floor program (parse the headers, look the flow up once in a table like
sluice's) and pairing that program with the floor, burst by burst, as
packet_cost.py pairs everything. Each line is the median ratio to the floor
(lowest-highest pair), and the difference in units of the empty XDP
program (also paired with the floor), the unit of issue 18's goals.

The pieces are those of sluice's path for a packet of a flow already
judged (bpf/sluice_xdp.c, flow.h, verdict.h, rate_limit.h): the clocks it
may read, per-CPU counter increments, the tunnel parsing, the throttle's
compare-and-swap; and the 40-byte flow key sluice had before the 16-byte
one, in its place.
"""

import argparse
import statistics
import sys
from pathlib import Path

import bcc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sluice.abi import bpf_source_dir  # noqa: E402
from sluice.testrun import run_xdp  # noqa: E402
from packet_cost import FLOOR_PROGRAM, show, tcp  # noqa: E402

# The floor, with one statement (PIECE) before its verdict, and room for a
# key other than sluice's.
FLOOR_WITH_PIECE = FLOOR_PROGRAM.replace("int flow_floor(", "int NAME(").replace(
    "\treturn flow->action == SLUICE_ACTION_BLOCK", "\tPIECE\n\treturn flow->action == SLUICE_ACTION_BLOCK")
assert "PIECE" in FLOOR_WITH_PIECE, "bench/packet_cost.py's floor program changed: update this"

# The floor's own declarations, and the counters a piece may increment.
DECLARATIONS = FLOOR_PROGRAM[:FLOOR_PROGRAM.index("int flow_floor(")] + """
BPF_TABLE("percpu_array", __u32, __u64, counter_slots, 4);

/* As coarse_now_ns() in bpf/common.h keeps it. */
struct cached_coarse_clock {
	__u64 jiffies;
	__u64 ns;
};
BPF_PERCPU_ARRAY(coarse_cache, struct cached_coarse_clock, 1);

static __always_inline void count_in_slot(__u32 index)
{
	__u64 *value = counter_slots.lookup(&index);

	if (value)
		*value += 1;
}
"""

# The floor with sluice's key before the 16-byte one: the 40-byte flow_key
# of both families (the frames here are IPv4).
FLOOR_KEY40 = """
BPF_TABLE("lru_hash", struct flow_key, struct flow_state, floor_flows40, SLUICE_FLOW_MAX);

int floor_key40(struct xdp_md *ctx)
{
	struct packet_info pkt = {};
	struct flow_key key = {};
	void *data = (void *)(long)ctx->data, *data_end = (void *)(long)ctx->data_end;

	if (parse_packet(data, data_end, data_end - data, &pkt, 0) < 0)
		return XDP_PASS;
	flow_make_key(&pkt, &key);
	struct flow_state *flow = floor_flows40.lookup(&key);
	if (!flow) {
		struct flow_state fresh = {};
		floor_flows40.update(&key, &fresh);
		return XDP_PASS;
	}
	return flow->action == SLUICE_ACTION_BLOCK ? XDP_DROP : XDP_PASS;
}
"""

# name -> (what it is, the statement added to the floor). A value read from
# a clock is compared, so that clang keeps the call.
PIECES = {
    "coarse_clock": ("bpf_ktime_get_coarse_ns() (idle check)",
                     "if (bpf_ktime_get_coarse_ns() == 1) return XDP_DROP;"),
    "jiffies": ("bpf_jiffies64() (inlined by the verifier)", "if (bpf_jiffies64() == 1) return XDP_DROP;"),
    "cached_coarse_clock": ("coarse_now_ns() (cached per CPU per jiffy)",
                            "{ __u32 zero = 0; struct cached_coarse_clock *c = coarse_cache.lookup(&zero); "
                            "__u64 tick = bpf_jiffies64(); if (!c) return XDP_PASS; "
                            "if (c->jiffies != tick) { c->ns = bpf_ktime_get_coarse_ns(); c->jiffies = tick; } "
                            "if (c->ns == 1) return XDP_DROP; }"),
    "precise_clock": ("bpf_ktime_get_ns() (throttle)", "if (bpf_ktime_get_ns() == 1) return XDP_DROP;"),
    "counters": ("three per-CPU counter increments", "count_in_slot(0); count_in_slot(1); count_in_slot(2);"),
    "cas": ("a compare-and-swap on the flow entry (throttle clock)",
            "__u64 seen = flow->next_ns[0]; __sync_val_compare_and_swap(&flow->next_ns[0], seen, seen + 1);"),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=200_000, help="test-run repetitions per burst")
    parser.add_argument("--pairs", type=int, default=7, help="alternations of floor and program per figure")
    args = parser.parse_args()

    body = FLOOR_PROGRAM[FLOOR_PROGRAM.index("int flow_floor("):]
    text = DECLARATIONS + body + FLOOR_KEY40 + "".join(
        FLOOR_WITH_PIECE[FLOOR_WITH_PIECE.index("int NAME("):].replace("NAME", f"piece_{name}").replace("PIECE", statement)
        for name, (_, statement) in PIECES.items())
    module = bcc.BPF(text=text, cflags=[f"-I{bpf_source_dir()}"])
    empty = bcc.BPF(text="int empty(struct xdp_md *ctx) { return XDP_PASS; }").load_func(b"empty", bcc.BPF.XDP).fd
    floor = module.load_func(b"flow_floor", bcc.BPF.XDP).fd
    frame = tcp(40001, b"x" * 100)

    def paired(fd: int, baseline: int) -> tuple:
        run_xdp(fd, frame)       # the flow exists from here on
        ratios = []
        for _ in range(args.pairs):
            base = run_xdp(baseline, frame, args.repeat).duration_ns
            ratios.append(run_xdp(fd, frame, args.repeat).duration_ns / max(base, 1))
        return statistics.median(ratios), min(ratios), max(ratios)

    print(f"command: {' '.join(sys.argv)}")
    print(f"each figure: {args.pairs} pairs of {args.repeat}-packet bursts, median ratio (lowest-highest)")
    floor_over_empty = paired(floor, empty)
    print(f"floor: {show(floor_over_empty)} the empty program\n")
    rows = [("the 40-byte key instead of the 16-byte one (sluice's before)", b"floor_key40")] + [
        (label, f"piece_{name}".encode()) for name, (label, _) in PIECES.items()]
    for label, function in rows:
        ratio = paired(module.load_func(function, bcc.BPF.XDP).fd, floor)
        delta = (ratio[0] - 1) * floor_over_empty[0]
        print(f"  {label:<54} {show(ratio)} floor  {delta:+.2f} empty programs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
