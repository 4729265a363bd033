"""Who a rule applies to, decided in the kernel, against `sluice explain`.

The real program classifies flows from many clients (IPv4 and IPv6, in
nested classes and in none), to several ports, with and without a SYN seen,
at several moments of a schedule; the rule each flow is counted under must
be the one Policy.decide() (what `sluice explain` prints) names.
"""

import ipaddress
import random
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from helpers import needs_root
from sluice.rollout import in_rollout
from sluice.testrun import run_xdp
from packets import client_hello, tcp_frame

pytestmark = [pytest.mark.bpf, needs_root]

POLICY = """\
version: 1
rollout_key: test-clients
classes:
  mobile:
    prefixes: [203.0.113.0/25, "2001:db8:100::/48"]
  fixed:
    prefixes: [203.0.113.128/25, "2001:db8:200::/48"]
  campus:
    prefixes: [203.0.113.192/26]          # inside fixed's /25: the longer prefix wins
rules:
  - name: campus-exempt
    action: allow
    class: campus
    percent: 50
    domains: [media.example]
  - name: mobile-media
    action: throttle
    rate: 130kbit
    class: mobile
    domains: [media.example]
  - name: fixed-media
    action: throttle
    rate: 130kbit
    class: fixed
    percent: 50
    ports: [443, 8000-8100]
    opened_by_client: true
    domains: [media.example]
    active: [{from: "2021-03-10T10:00:00+03:00"}]
    escalate: [{at: "2021-04-01T00:00:00Z", action: block}]
  - name: video-everyone
    action: block
    mode: monitor
    domains: [video.media.example]
  - name: canary
    action: block
    percent: 5
    domains: [canary.example]
  - name: night
    action: block
    domains: [night.example]
    active: [{daily: "22:00-06:00", timezone: Europe/Moscow}]
"""

MOMENTS = ["2021-03-01T12:00:00+00:00",     # before fixed-media starts; night over (15:00 in Moscow)
           "2021-03-20T20:00:00+00:00",     # fixed-media throttles; 23:00 in Moscow: night
           "2021-05-01T12:00:00+00:00"]     # fixed-media escalated to block
NAMES = [b"media.example", b"img.media.example", b"video.media.example", b"canary.example",
         b"night.example", b"unrelated.example"]


def clients(count: int, seed: int = 7) -> list[str]:
    """Addresses in every class, between them, and in none, v4 and v6."""
    rng = random.Random(seed)
    pools = [ipaddress.ip_network(n) for n in ("203.0.113.0/24", "2001:db8:100::/48", "2001:db8:200::/48",
                                               "192.0.2.0/24", "2001:db8:300::/48")]
    found = []
    for _ in range(count):
        pool = rng.choice(pools)
        found.append(str(pool[rng.randrange(1, pool.num_addresses - 1)]))
    return found


def kernel_rule(dp, name: bytes, client: str, port: int, syn: bool, sport: int) -> str | None:
    """The rule the real program counts a new flow under (None: no rule)."""
    v6 = ":" in client
    before = dp.rule_stats()
    if syn:
        run_xdp(dp.function.fd, tcp_frame(flags="S", sport=sport, dport=port, v6=v6, src=client))
    run_xdp(dp.function.fd, tcp_frame(client_hello(name), sport=sport, dport=port, v6=v6, src=client))
    after = dp.rule_stats()
    moved = [rule_id for rule_id in after if after[rule_id]["flows"] != before[rule_id]["flows"]]
    assert len(moved) == 1, moved
    rule = dp.policy.rule_by_id(moved[0])
    return rule.name if rule else None


@pytest.mark.parametrize("moment", MOMENTS)
def test_kernel_chooses_the_rule_explain_names(make_datapath, moment):
    at = datetime.fromisoformat(moment)
    dp = make_datapath(POLICY, at=at)
    rng = random.Random(moment)
    sport = 30000
    disagreements, chosen = [], set()
    for client in clients(160):
        for name in rng.sample(NAMES, 2):
            port, syn = rng.choice([443, 443, 80, 8080]), rng.random() < 0.7
            sport += 1
            expected = dp.policy.decide(name, client, port, syn).rule
            expected = expected.name if expected else None
            chosen.add(expected)
            got = kernel_rule(dp, name, client, port, syn, sport)
            if got != expected:
                disagreements.append((name, client, port, syn, expected, got))
    assert not disagreements, disagreements[:10]
    # The sample must exercise the decisions, or agreeing proves little.
    assert {"mobile-media", "canary", None} <= chosen
    assert ("fixed-media" in chosen) == (moment != MOMENTS[0])


def test_rollout_share_in_the_kernel_is_the_controllers(make_datapath):
    dp = make_datapath(POLICY)
    addresses = [f"192.0.2.{i}" for i in range(1, 255)] + [f"2001:db8:300:{i:x}::1" for i in range(400)]
    inside = 0
    for sport, client in enumerate(addresses, start=40000):
        expected = in_rollout(dp.policy.rollout_key, client, dp.policy.rule_by_name("canary").percent)
        inside += expected
        assert (kernel_rule(dp, b"canary.example", client, 443, True, sport) == "canary") == expected, client
    assert 10 <= inside <= 60, "about 5% of 654 clients"


def test_same_ipv6_device_is_always_in_or_always_out(make_datapath):
    dp = make_datapath(POLICY)
    verdicts = {kernel_rule(dp, b"canary.example", f"2001:db8:300:7::{host:x}", 443, True, 45000 + host)
                for host in range(1, 40)}
    assert len(verdicts) == 1


def test_a_million_prefixes_load_into_the_trie(make_datapath, tmp_path):
    lines = [f"10.{i >> 12 & 255}.{i >> 4 & 255}.{(i & 15) << 4}/28" for i in range(1_000_000)]
    (tmp_path / "many.txt").write_text("\n".join(lines) + "\n")
    dp = make_datapath(f"version: 1\nclasses:\n  many: {{prefixes_file: {tmp_path}/many.txt}}\n"
                       "rules:\n  - {name: many-block, action: block, class: many, domains: [a.example]}\n")
    first, last = ipaddress.ip_network(lines[0]), ipaddress.ip_network(lines[-1])
    for sport, (client, rule) in enumerate([(str(first[1]), "many-block"), (str(last[-1]), "many-block"),
                                            (str(last[-1] + 1), None), ("192.0.2.9", None)], start=47000):
        assert kernel_rule(dp, b"a.example", client, 443, True, sport) == rule, client


CAMPAIGN = Path(__file__).resolve().parent.parent / "policies" / "campaign-2021.yaml"
LOOK_ALIKES = [b"microsoft.com", b"reddit.com", b"nottwimg.com", b"twimg.com.evil.example", b"twimg.co",
               b"at.co", b"t.com", b"t.co.example", b"rt.com"]


@pytest.mark.parametrize("moment, action", [("2021-03-20T12:00:00+03:00", "throttle"),
                                            ("2021-05-20T12:00:00+03:00", "block")])
def test_the_campaign_example_hits_its_hosts_and_never_a_look_alike(make_datapath, moment, action):
    dp = make_datapath(CAMPAIGN.read_text(), at=datetime.fromisoformat(moment))
    mobile = [f"203.0.113.{i}" for i in range(1, 60)]
    fixed = [f"192.0.2.{i}" for i in range(1, 200)]
    sport = 51000
    for client in mobile[:10] + fixed[:10]:
        for name in LOOK_ALIKES:
            sport += 1
            assert kernel_rule(dp, name, client, 443, True, sport) is None, (name, client)
    for client in mobile:
        sport += 1
        assert kernel_rule(dp, b"video.twimg.com", client, 443, True, sport) == "media-mobile"
    hit = 0
    for client in fixed:
        sport += 1
        rule = kernel_rule(dp, b"pbs.twimg.com", client, 443, True, sport)
        assert rule == (dp.policy.decide(b"pbs.twimg.com", client).rule or SimpleNamespace(name=None)).name
        hit += rule == "media-fixed"
    assert 0.35 < hit / len(fixed) < 0.65, "about half of the fixed clients"
    assert dp.policy.rule_by_name("media-fixed").action == action
    sport += 1
    assert kernel_rule(dp, b"pbs.twimg.com", mobile[0], 443, False, sport) is None, "not opened by the client"
    # Its inspection is the 2021 profile's: each segment read alone, as the
    # documented throttler read them, so a hello split at byte 1 is not named.
    sport += 1
    def flows():
        return {rule_id: stats["flows"] for rule_id, stats in dp.rule_stats().items() if rule_id}
    hello, before = client_hello(b"video.twimg.com"), flows()
    for payload, seq, flags in [(b"", 0, "S"), (hello[:1], 1, "PA"), (hello[1:], 2, "PA")]:
        run_xdp(dp.function.fd, tcp_frame(payload, flags=flags, seq=seq, sport=sport, src=mobile[0]))
    assert flows() == before, "a split hello passes unthrottled"
