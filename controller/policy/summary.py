# SPDX-License-Identifier: GPL-2.0-only
"""What a valid policy does, in a few lines, for `sluice validate`."""

from ..clocks import coarse_tick_ns, describe_clock, limit_times, police_clock
from .model import Policy


def counted(count: int, noun: str, plural: str = "") -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {plural or noun + 's'}"


def police_clock_of(limit) -> str:
    """The clock the data plane polices limit on, on this machine."""
    tick_ns = coarse_tick_ns()
    return describe_clock(police_clock(limit_times(limit)[1], tick_ns), tick_ns)


def policy_summary(policy: Policy) -> str:
    """What a valid policy does, in a few lines, for `sluice validate`."""
    names = sum(len(r.suffixes) + len(r.exact) for r in policy.rules)
    classes = "".join(f"\n  class {c.name}: {counted(sum(policy.classes.class_ids == c.id), 'prefix', 'prefixes')}"
                      for c in policy.classes.classes)
    lines = [f"{policy.path}: valid, {counted(len(policy.rules), 'rule')} naming {counted(names, 'domain')}; "
             f"flows idle for {policy.flow_idle_ns / 1e9:g} s are forgotten; "
             f"{policy.window_packets} payload packets inspected per flow{classes}"]
    for rule in policy.rules:
        what = rule.action + (" (monitor: counted, not enforced)" if rule.monitor else "")
        if rule.action == "block" and rule.block_method != "drop":
            what += f", by {rule.block_method}"
        if rule.limits:
            what += ", " + ", ".join(f"{d} {limit.rate_bps / 1000:g} kbit/s burst {limit.burst_bytes} B"
                                     + (f" on the {police_clock_of(limit)}" if rule.action == "throttle" else "")
                                     for d, limit in sorted(rule.limits.items())) + f", per {rule.scope}"
        if rule.latency_ns:
            what += f", {rule.latency_ns / 1e6:g} ms" + (f" +0..{rule.jitter_ns / 1e6:g} ms" if rule.jitter_ns else "")
        who = [f"class {rule.client_class}" if rule.client_class else "",
               f"{rule.percent}% of clients" if rule.percent != 100 else "",
               "ports " + ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in rule.ports) if rule.ports else "",
               "client-opened flows" if rule.opened_by_client else "",
               "active " + "; ".join(w.describe() for w in rule.active) if rule.active else "",
               "; ".join(f"{step.action} from {step.at.isoformat()}" for step in rule.escalate)]
        who += [("protocol " + " or ".join(rule.protocols)) if rule.protocols else "",
                f"destination {rule.destination}" if rule.destination else "",
                f"ECH {rule.ech}" if rule.ech else "",
                "ALPN " + ",".join(rule.alpn) if rule.alpn else "",
                rule.trigger.describe() if rule.trigger else ""]
        who = [part for part in who if part]
        what += f" [{', '.join(who)}]" if who else ""
        lines.append(f"  {rule.id:>3} {rule.name}: {what}; {len(rule.suffixes)} suffixes, {len(rule.exact)} exact")
    return "\n".join(lines)
