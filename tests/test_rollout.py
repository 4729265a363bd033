"""Rollout shares, precedence and schedules, in Python (the kernel's side is
tests/test_bpf_clients.py, which holds it to these same answers)."""

import ipaddress
import random
import subprocess
import sys
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from sluice.policy import PolicyError, load_policy
from sluice.rollout import in_rollout, rollout_key, rollout_value, siphash24

KEY = rollout_key("test")


def test_siphash_matches_the_reference_vectors():
    """SipHash-2-4 test vectors of the reference implementation (key 00..0f, message 00..len-1)."""
    key = bytes(range(16))
    assert siphash24(key, b"") == 0x726FDB47DD0E0E31
    assert siphash24(key, bytes(range(15))) == 0xA129CA6149BE45E5
    assert siphash24(key, bytes(range(16))) == 0x3F2ACC7F57C29BDB


def addresses(count: int, v6: bool, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    if v6:
        return [str(ipaddress.IPv6Address((0x20010DB8 << 96) | (rng.getrandbits(32) << 64) | rng.getrandbits(64)))
                for _ in range(count)]
    return [str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(count)]


@pytest.mark.parametrize("v6", [False, True])
def test_shares_are_within_half_a_point_over_100000_clients(v6):
    values = [rollout_value(KEY, a) for a in addresses(100_000, v6)]
    for percent in ("0.5", "5", "10", "33.33", "50", "95"):
        share = sum(v < int(Decimal(percent) * 2**32 / 100) for v in values) / len(values) * 100
        assert abs(share - float(percent)) <= 0.5, (percent, share)


def test_raising_a_share_keeps_everyone_already_in():
    clients = addresses(20_000, False)
    ten = {c for c in clients if in_rollout(KEY, c, Decimal(10))}
    twenty = {c for c in clients if in_rollout(KEY, c, Decimal(20))}
    assert ten < twenty and 0.08 < len(ten) / len(clients) < 0.12


def test_an_ipv6_device_is_one_client_and_the_key_redraws_the_share():
    device = [f"2001:db8:1:2:{i:x}::{i:x}" for i in range(1, 50)]
    assert len({rollout_value(KEY, a) for a in device}) == 1
    assert rollout_value(KEY, "2001:db8:1:3::1") != rollout_value(KEY, "2001:db8:1:2::1")
    clients = addresses(2000, False)
    first = {c for c in clients if in_rollout(KEY, c, Decimal(50))}
    other = {c for c in clients if in_rollout(rollout_key("another"), c, Decimal(50))}
    assert first != other
    assert all(in_rollout(KEY, c, Decimal(100)) for c in clients[:100])
    assert not any(in_rollout(KEY, c, Decimal(0)) for c in clients[:100])


PRECEDENCE = """\
version: 1
classes:
  wide: {prefixes: [10.0.0.0/8]}
  narrow: {prefixes: [10.1.0.0/16]}
rules:
  - {name: late-allow, action: block, domains: [x.example]}
  - {name: general, action: throttle, rate: 1mbit, domains: [example]}
  - {name: wide-x, action: block, class: wide, domains: [x.example]}
  - {name: narrow-sub, action: block, class: narrow, domains: [sub.x.example]}
  - {name: exempt, action: allow, class: narrow, domains: [example]}
  - {name: exact-sub, action: throttle, rate: 1mbit, exact: [sub.x.example]}
"""


@pytest.mark.parametrize("name, client, rule", [
    # 1. exemptions always win, even over a more specific domain
    (b"sub.x.example", "10.1.2.3", "exempt"),
    (b"other.example", "10.1.2.3", "exempt"),
    # 2. the most specific domain: exact before suffix, longer suffix before shorter
    (b"sub.x.example", "192.0.2.1", "exact-sub"),
    (b"a.sub.x.example", "192.0.2.1", "late-allow"),
    (b"y.example", "192.0.2.1", "general"),
    # 3. the most specific class: a rule for the client's class before one for everyone
    (b"x.example", "10.9.9.9", "wide-x"),
    (b"x.example", "192.0.2.1", "late-allow"),
    # ...and a client in a nested prefix belongs to the narrower class only
    (b"a.sub.x.example", "10.2.0.1", "wide-x"),
    # 4. rule order breaks the remaining ties
    (b"nothing.else", "10.2.0.1", None),
])
def test_precedence(tmp_path, name, client, rule):
    path = tmp_path / "p.yaml"
    path.write_text(PRECEDENCE)
    decided = load_policy(path).decide(name, client).rule
    assert (decided.name if decided else None) == rule


def test_rule_order_decides_between_equals(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\nrules:\n  - {name: first, action: block, domains: [a.example]}\n"
                    "  - {name: second, action: throttle, rate: 1mbit, domains: [a.example]}\n")
    assert load_policy(path).decide(b"a.example", "192.0.2.1").rule.name == "first"


SCHEDULED = """\
version: 1
rules:
  - name: campaign
    action: throttle
    rate: 130kbit
    domains: [media.example]
    active: [{from: "2021-03-10T10:00:00+03:00", until: "2021-06-01T00:00:00Z"}]
    escalate: [{at: "2021-04-01T00:00:00Z", action: block}]
  - name: evenings
    action: block
    domains: [games.example]
    active: [{daily: "22:00-06:00", timezone: Europe/Moscow}]
"""


@pytest.mark.parametrize("moment, media, games", [
    ("2021-03-10T06:59:59Z", None, "evenings"),            # 09:59 Moscow... games: 09:59 is outside
    ("2021-03-10T07:00:00Z", "throttle", None),
    ("2021-04-01T00:00:00Z", "block", "evenings"),         # 03:00 in Moscow
    ("2021-06-01T00:00:00Z", None, "evenings"),
    ("2021-07-01T19:30:00Z", None, "evenings"),            # 22:30 in Moscow
])
def test_schedules_and_escalation(tmp_path, moment, media, games):
    path = tmp_path / "p.yaml"
    path.write_text(SCHEDULED)
    policy = load_policy(path).at(datetime.fromisoformat(moment))
    decided = policy.decide(b"cdn.media.example", "192.0.2.1").rule
    assert (decided.action if decided else None) == media
    decided = policy.decide(b"games.example", "192.0.2.1").rule
    expected_games = games if moment != "2021-03-10T06:59:59Z" else None
    assert (decided.name if decided else None) == expected_games


def test_an_escalation_step_brings_its_own_details(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\nrules:\n  - name: video\n    action: throttle\n    rate: 1mbit\n"
                    "    domains: [media.example]\n    escalate:\n"
                    "      - {at: '2021-04-01T00:00:00Z', action: shape, rate: 130kbit, horizon: 1s}\n"
                    "      - {at: '2021-05-01T00:00:00Z', action: delay, latency: 250ms}\n")
    policy = load_policy(path)
    throttled, shaped, delayed = (policy.at(datetime.fromisoformat(t)).rules[0] for t in
                                  ("2021-03-01T00:00:00Z", "2021-04-01T00:00:00Z", "2021-05-01T00:00:00Z"))
    assert (throttled.action, throttled.limits["down"].rate_bps) == ("throttle", 1_000_000)
    assert (shaped.action, shaped.limits["down"].rate_bps, shaped.horizon_ns) == ("shape", 130_000, 10**9)
    assert (delayed.action, delayed.limits, delayed.latency_ns) == ("delay", {}, 250_000_000)


def test_next_switch_walks_every_boundary(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(SCHEDULED)
    policy = load_policy(path)
    t = datetime(2021, 3, 31, 12, tzinfo=timezone.utc)
    seen = []
    for _ in range(4):
        t = policy.next_switch(t)
        seen.append(t.astimezone(timezone.utc).isoformat())
    assert seen == ["2021-03-31T19:00:00+00:00", "2021-04-01T00:00:00+00:00",
                    "2021-04-01T03:00:00+00:00", "2021-04-01T19:00:00+00:00"]


@pytest.mark.parametrize("rule_text, message", [
    ("class: nowhere", "unknown client class 'nowhere'"),
    ("percent: 12.345", "percent must be 0 to 100 in steps of 0.01"),
    ("percent: 101", "percent must be 0 to 100"),
    ("ports: [0]", "not a port or range of ports"),
    ("ports: [9000-8000]", "not a port or range of ports"),
    ("ports: [1, 2, 3, 4, 5]", "5 port ranges; at most 4"),
    ("active: [{from: '2021-03-10T10:00:00'}]", "has no UTC offset"),
    ("active: [{daily: '25:00-06:00'}]", "not a daily window"),
    ("active: [{daily: '22:00-06:00', timezone: Mars/Olympus}]", "unknown time zone"),
    ("escalate: [{at: '2021-04-01T00:00:00Z', action: block}, {at: '2021-03-01T00:00:00Z', action: allow}]",
     "escalation steps must be in time order"),
    ("escalate: [{at: '2021-04-01T00:00:00Z', action: throttle}]", "needs a rate"),
])
def test_who_and_when_errors_name_the_line(tmp_path, rule_text, message):
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\nclasses:\n  lab: {prefixes: [192.0.2.0/24]}\nrules:\n"
                    f"  - name: r\n    action: block\n    domains: [a.example]\n    {rule_text}\n")
    with pytest.raises(PolicyError) as refused:
        load_policy(path)
    assert any(p.line == 8 and message in p.message for p in refused.value.problems), refused.value


@pytest.mark.parametrize("prefixes, message", [
    ("[198.51.100.1/24]", "has bits set past its /24"),
    ("[198.51.100.0/33]", "prefix length must be 0 to 32"),
    ("[not-an-address]", "not an IPv4 or IPv6 prefix"),
    ("[192.0.2.0/24, 192.0.2.0/24]", "already in class a"),
])
def test_class_errors_name_the_line(tmp_path, prefixes, message):
    path = tmp_path / "p.yaml"
    path.write_text(f"version: 1\nclasses:\n  a:\n    prefixes: {prefixes}\nrules: []\n")
    with pytest.raises(PolicyError) as refused:
        load_policy(path)
    assert any(p.line == 4 and message in p.message for p in refused.value.problems), refused.value


def test_too_many_rules_for_one_name_is_refused(tmp_path):
    rules = "".join(f"  - {{name: r{i}, action: block, domains: [a.example]}}\n" for i in range(9))
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\nrules:\n" + rules)
    with pytest.raises(PolicyError, match=r"p.yaml:11:1: 9 rules could apply to 'a.example'"):
        load_policy(path)


def test_a_million_prefixes_load(tmp_path):
    lines = [f"10.{i >> 12 & 255}.{i >> 4 & 255}.{(i & 15) << 4}/28" for i in range(1_000_000)]
    (tmp_path / "many.txt").write_text("# a million /28s\n" + "\n".join(lines) + "\n")
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\nclasses:\n  many: {prefixes_file: many.txt}\n"
                    "rules:\n  - {name: r, action: block, class: many, domains: [a.example]}\n")
    policy = load_policy(path)
    assert len(policy.classes) == 1_000_000
    last = ipaddress.ip_network(lines[-1])
    assert policy.decide(b"a.example", str(last[5])).client_class.name == "many"
    assert policy.decide(b"a.example", str(last[-1] + 1)).client_class is None
    assert policy.decide(b"a.example", "11.0.0.1").client_class is None


def test_explain_prints_the_decision_and_why(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(SCHEDULED)
    out = subprocess.run([sys.executable, "-m", "sluice", "explain", "--policy", str(path),
                          "--client", "192.0.2.7", "--name", "CDN.media.example.", "--at",
                          "2021-04-02T00:00:00Z"], capture_output=True, text=True, check=True).stdout
    assert "most specific entry suffix media.example" in out
    assert "verdict block by rule campaign" in out
    out = subprocess.run([sys.executable, "-m", "sluice", "explain", "--policy", str(path),
                          "--client", "192.0.2.7", "--name", "media.example", "--at",
                          "2021-03-01T00:00:00Z"], capture_output=True, text=True, check=True).stdout
    assert "rule campaign: skipped, outside its active windows" in out and "verdict pass" in out
