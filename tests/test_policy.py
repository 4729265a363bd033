"""The policy compiler: what loads, what is refused, and where the error points."""

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from sluice.abi import ABI
from sluice.clocks import COARSE_CLOCK_TICKS, coarse_tick_ns, limit_times, police_clock
from sluice.names import name_hashes, name_hashes_many, normalise
from sluice.policy import (DEFAULT_FLOW_IDLE_NS, DEFAULT_WINDOW_PACKETS, PolicyError, load_policy,
                               parse_duration, parse_rate, parse_size, policy_summary)

REPO = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((REPO / "controller" / "policy.schema.json").read_text())


def write(tmp_path, text, name="policy.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(tmp_path, text, name="policy.yaml"):
    """The problems a policy is refused with, as 'line:column: message' strings."""
    path = write(tmp_path, text, name)
    with pytest.raises(PolicyError) as refused:
        load_policy(path)
    for problem in refused.value.problems:
        assert str(problem).startswith(f"{problem.file}:{problem.line}:{problem.column}: ")
    return [f"{p.line}:{p.column}: {p.message}" for p in refused.value.problems]


def test_a_good_policy_loads_with_ids_flags_defaults_and_normalised_names(tmp_path):
    policy = load_policy(write(tmp_path, """\
version: 1
rules:
  - name: first
    action: block
    domains: [Twimg.COM., pbs.example]
    exact: [T.co]
  - name: second
    action: allow
    mode: monitor
    domains: [allowed.example]
"""))
    assert policy.flow_idle_ns == DEFAULT_FLOW_IDLE_NS == 600 * 10**9
    assert policy.window_packets == DEFAULT_WINDOW_PACKETS
    first, second = policy.rules
    assert (first.id, first.name, first.action, first.monitor) == (1, "first", "block", False)
    assert first.suffixes == [b"twimg.com", b"pbs.example"] and first.exact == [b"t.co"]
    assert (second.id, second.action, second.monitor) == (2, "allow", True)
    assert policy.rule_by_id(2) is second and policy.rule_by_id(0) is None
    assert "2 rules naming 4 domains" in policy_summary(policy)


def test_settings_and_units(tmp_path):
    policy = load_policy(write(tmp_path, """\
version: 1
flow_idle_timeout: 90s
inspection: {window_packets: 20}
rules:
  - name: slow
    action: throttle
    up: {rate: 128kbit, burst: 16KiB}
    down: {rate: 1.5mbit}
    scope: client
    domains: [video.example]
  - name: lag
    action: delay
    latency: 250ms
    jitter: 20ms
    domains: [lag.example]
"""))
    assert policy.flow_idle_ns == 90 * 10**9 and policy.window_packets == 20
    slow, lag = policy.rules
    assert slow.limits["up"].rate_bps == 128_000 and slow.limits["up"].burst_bytes == 16384
    assert slow.limits["down"].rate_bps == 1_500_000
    assert slow.limits["down"].burst_bytes == 1_500_000 // 8 // 2      # default: 500 ms at the rate
    assert slow.scope == "client"
    assert (lag.latency_ns, lag.jitter_ns) == (250 * 10**6, 20 * 10**6)


def test_a_throttle_is_policed_on_the_coarse_clock_where_its_bucket_holds_four_ticks(tmp_path):
    tick_ns = 4_000_000
    assert police_clock(COARSE_CLOCK_TICKS * tick_ns, tick_ns) == ABI.SLUICE_CLOCK_COARSE
    assert police_clock(COARSE_CLOCK_TICKS * tick_ns - 1, tick_ns) == ABI.SLUICE_CLOCK_PRECISE
    policy = load_policy(write(tmp_path, """\
version: 1
rules:
  - name: typical
    action: throttle
    rate: 10mbit
    domains: [typical.example]
  - name: fast
    action: throttle
    up: {rate: 10gbit, burst: 64KiB}
    down: {rate: 10gbit}
    domains: [fast.example]
  - name: paced
    action: shape
    rate: 10mbit
    domains: [paced.example]
"""))
    typical, fast, _ = policy.rules
    assert limit_times(typical.limits["up"]) == (800_000, 500_000_000)   # 0.8 us a byte, a burst of 500 ms
    assert limit_times(fast.limits["up"]) == (800, 52_428)
    tick_ms = f"{coarse_tick_ns() / 1e6:g} ms"
    lines = policy_summary(policy).splitlines()
    assert lines[1].count(f"on the coarse clock ({tick_ms} tick)") == 2
    assert f"up 1e+07 kbit/s burst 65536 B on the precise clock (burst under 4 ticks of {tick_ms})" in lines[2]
    assert f"down 1e+07 kbit/s burst 625000000 B on the coarse clock ({tick_ms} tick)" in lines[2]
    assert "clock" not in lines[3], "a pacer always reads the precise clock: nothing to say"


@pytest.mark.parametrize("text, value", [("128kbit", 128_000), ("1.5mbit", 1_500_000), ("400gbit", 400 * 10**9),
                                          ("8bit", 8), ("10 Mbit", 10**7)])
def test_rates(text, value):
    assert parse_rate(text) == value


@pytest.mark.parametrize("text, value", [("64KiB", 65536), ("1500B", 1500), ("2MB", 2 * 10**6), ("1GiB", 2**30)])
def test_sizes(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text, value", [("250ms", 250 * 10**6), ("10m", 600 * 10**9), ("1.5s", 1_500_000_000),
                                          ("7d", 7 * 86400 * 10**9)])
def test_durations(text, value):
    assert parse_duration(text) == value


@pytest.mark.parametrize("snippet, expected", [
    ("version: 1\nrules: []\nextra: 1\n", "3:1: unknown key 'extra' in the policy"),
    ("version: 1\ninspection: {window: 3}\nrules: []\n", "2:14: unknown key 'window' in inspection"),
    ("version: 1\nrules:\n  - name: a\n    action: block\n    domain: [x.example]\n",
     "5:5: unknown key 'domain' in rule 1"),
    ("version: 1\nrules:\n  - name: a\n    action: explode\n    domains: [x.example]\n",
     "4:13: unknown action 'explode'"),
    ("version: 1\nrules:\n  - name: a\n    action: block\n    mode: dry\n    domains: [x.example]\n",
     "5:11: unknown mode 'dry'"),
    ("version: 2\nrules: []\n", "1:10: version must be between 1 and 1"),
    ("version: 1\nflow_idle_timeout: 10 minutes\nrules: []\n", "2:20: flow_idle_timeout: not a duration"),
    ("version: 1\nflow_idle_timeout: 0s\nrules: []\n", "2:20: flow_idle_timeout must be more than zero"),
    ("version: 1\ninspection: {window_packets: 0}\nrules: []\n", "2:30: window_packets must be between 1 and 255"),
    ("version: 1\ninspection: {window_bytes: 64MiB}\nrules: []\n", "2:28: window_bytes '64MiB' is out of range"),
    ("version: 1\ninspection: {fragments: keep}\nrules: []\n", "2:25: fragments must be reassemble"),
    ("version: 1\ninspection: {tunnels: [gre, l2tp]}\nrules: []\n", "2:29: unknown tunnel 'l2tp'"),
    ("version: 1\ninspection: {tunnels: gre}\nrules: []\n", "2:23: tunnels must be a list"),
    ("version: 1\ninspection: {proxy_protocol: on}\nrules: []\n", "2:30: proxy_protocol must be true or false"),
    ("version: 1\nrules:\n  - name: a\n    action: block\n", "3:5: rule a names no domains and no other condition"),
    ("version: 1\nrules:\n  - action: block\n    domains: [x.example]\n", "3:5: rule 1 has no name"),
    ("version: 1\nrules:\n  - name: a\n    action: block\n    domains: x.example\n",
     "5:14: domains must be a list"),
    ("version: 1\nrules: [\n", "not valid YAML"),
    ("", "1:1: the policy is empty"),
])
def test_each_mistake_is_reported_where_it_is(tmp_path, snippet, expected):
    found = problems(tmp_path, snippet)
    assert any(expected in p for p in found), found


@pytest.mark.parametrize("domain, message", [
    ("a..example", "empty label"),
    ("x" * 64 + ".example", "label of 64 characters"),
    (".".join(["abcdefghi"] * 26), "a domain name has at most 253"),
    ("192.0.2.1", "is an IP address"),
    ("2001:db8::1", "is an IP address"),
    ("*.example.com", "wildcard"),
    ("bücher.example", "use its IDNA form"),
    ("bad!name.example", "may only use letters"),
])
def test_bad_domain_names_are_refused_with_a_reason(tmp_path, domain, message):
    found = problems(tmp_path, f'version: 1\nrules:\n  - name: a\n    action: block\n    domains: ["{domain}"]\n')
    assert len(found) == 1 and found[0].startswith("5:15: ") and message in found[0], found


def test_duplicate_rule_names_and_domains_name_both_places(tmp_path):
    found = problems(tmp_path, """\
version: 1
rules:
  - name: a
    action: block
    domains: [x.example, X.example.]
  - name: a
    action: allow
    domains: [y.example]
""")
    assert "6:11: rule name 'a' is already used by rule 1" in found
    assert any(p.startswith("5:26: duplicate suffix 'x.example': already given at") and p.endswith(":5:15")
               for p in found), found


def test_several_rules_may_name_one_domain(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\nrules:\n  - {name: a, action: block, domains: [x.example]}\n"
                    "  - {name: b, action: allow, domains: [x.example]}\n")
    assert [r.name for r in load_policy(path).rules] == ["a", "b"]


def test_same_name_as_suffix_and_exact_is_fine(tmp_path):
    policy = load_policy(write(tmp_path, """\
version: 1
rules:
  - {name: a, action: allow, domains: [x.example]}
  - {name: b, action: block, exact: [x.example]}
"""))
    assert [r.name for r in policy.rules] == ["a", "b"]


def test_every_problem_is_reported_at_once(tmp_path):
    found = problems(tmp_path, """\
version: 1
rules:
  - name: a
    action: explode
    domains: [a..example]
  - name: b
    action: block
    colour: red
    domains: [ok.example]
""")
    assert [p.split(": ")[0] for p in found] == ["4:13", "5:15", "8:5"]


@pytest.mark.parametrize("snippet, expected", [
    ("rate: -5kbit", "7:11: rate: not a rate"),
    ("rate: 0kbit", "7:11: rate must be more than zero"),
    ("rate: 500gbit", "7:11: rate '500gbit' is out of range"),
    ("rate: 1mbit\n    burst: 1KiB", "8:12: burst of 1024 bytes is smaller than one full-size frame"),
    ("burst: 64KiB", "7:5: burst needs a rate beside it"),
    ("up: {burst: 64KiB}", "7:9: up needs a rate"),
    ("latency: 5ms", "7:5: 'latency' does not apply to action throttle"),
    ("rate: 1mbit\n    scope: planet", "8:12: unknown scope 'planet'"),
])
def test_nonsense_rates_are_refused(tmp_path, snippet, expected):
    text = f"version: 1\nrules:\n  - name: a\n    action: throttle\n    domains: [x.example]\n    mode: enforce\n    {snippet}\n"
    found = problems(tmp_path, text)
    assert any(expected in p for p in found), found


def test_a_rate_rule_needs_a_rate(tmp_path):
    found = problems(tmp_path, "version: 1\nrules:\n  - name: a\n    action: throttle\n    domains: [x.example]\n")
    assert any("3:5: a throttle rule needs a rate" in p for p in found), found


def test_delay_horizon_must_exceed_latency(tmp_path):
    found = problems(tmp_path, "version: 1\nrules:\n  - name: a\n    action: delay\n    latency: 2s\n"
                               "    horizon: 1s\n    domains: [x.example]\n")
    assert any("6:14: horizon must be longer than latency" in p for p in found), found


def test_too_many_rules(tmp_path):
    rules = "".join(f"  - {{name: r{i}, action: block, domains: [r{i}.example]}}\n" for i in range(4096))
    found = problems(tmp_path, "version: 1\nrules:\n" + rules)
    assert any("3:3: 4096 rules; at most 4095" in p for p in found), found[:3]


def test_domains_file_problems_point_into_that_file(tmp_path):
    (tmp_path / "feed.txt").write_text("# a feed\nok.example\n\n  bad..example  # spaces, comment\nok.example\n")
    path = write(tmp_path, "version: 1\nrules:\n  - name: a\n    action: block\n    domains_file: feed.txt\n")
    with pytest.raises(PolicyError) as refused:
        load_policy(path)
    rendered = [str(p) for p in refused.value.problems]
    assert f"{tmp_path / 'feed.txt'}:4:3: 'bad..example' has an empty label" in rendered
    assert any(r.startswith(f"{tmp_path / 'feed.txt'}:5:1: duplicate suffix 'ok.example'") for r in rendered)


def test_missing_domains_file(tmp_path):
    found = problems(tmp_path, "version: 1\nrules:\n  - name: a\n    action: block\n    domains_file: nope.txt\n")
    assert any(p.startswith("5:19: cannot read domains_file") for p in found), found


def test_a_million_domains_load_from_a_file(tmp_path):
    (tmp_path / "feed.txt").write_text("".join(f"host{i}.feed.example\n" for i in range(1_000_000)))
    policy = load_policy(write(tmp_path, "version: 1\nrules:\n  - {name: a, action: block, domains_file: feed.txt}\n"))
    suffixes = policy.rules[0].suffixes
    assert len(suffixes) == 1_000_000 and suffixes[123456] == b"host123456.feed.example"


def test_example_policies_load_and_match_the_published_schema():
    examples = sorted((REPO / "policies").glob("*.yaml"))
    assert examples
    for path in examples:
        load_policy(path)
        jsonschema.validate(yaml.safe_load(path.read_text()), SCHEMA)


PLAYBOOK_RULE = "version: 1\ndestinations:\n  cdn: {{prefixes: [198.51.100.0/24]}}\nrules:\n  - {{name: a, {}}}\n"


@pytest.mark.parametrize("rule, expected", [
    ("action: block, protocol: smtp", "5:40: unknown protocol 'smtp'; one of: tls, http, quic, any"),
    ("action: block, tls: {ech: maybe}", "5:41: ech must be present or absent"),
    ("action: block, tls: {alpn: h2}", "5:42: alpn must be a list of protocol ids"),
    ("action: block, tls: {alpn: [h2, sixteen-bytes-id]}", "5:47: ALPN id 'sixteen-bytes-id': 1 to 15"),
    ("action: block, tls: {}", "5:35: tls needs ech"),
    ("action: block, protocol: http, tls: {ech: present}", "5:46: tls conditions need a ClientHello"),
    ("action: block, destination: cloud", "5:43: unknown destination set 'cloud'; known: cdn"),
    ("action: freeze, destination: cdn, after: {bytes: 16KiB}", "5:56: after needs bytes or packets"),
    ("action: freeze, destination: cdn, after: {bytes: 16KiB, packets: 3, direction: down}",
     "5:56: after needs bytes or packets (one of them)"),
    ("action: freeze, destination: cdn, after: {bytes: 5GiB, direction: down}", "5:64: bytes '5GiB' is out of range"),
    ("action: freeze, destination: cdn, after: {packets: 0, direction: down}", "5:66: packets must be between 1"),
    ("action: freeze, destination: cdn, after: {packets: 3, direction: sideways}", "5:80: direction must be up or down"),
    ("action: freeze", "5:5: rule a names no domains and no other condition"),
])
def test_playbook_mistakes_are_reported_where_they_are(tmp_path, rule, expected):
    found = problems(tmp_path, PLAYBOOK_RULE.format(rule))
    assert any(expected in p for p in found), found


def test_playbook_conditions_and_triggers_load(tmp_path):
    policy = load_policy(write(tmp_path, PLAYBOOK_RULE.format(
        "action: freeze, protocol: [quic, tls], tls: {ech: present, alpn: [h2, h2, h3]}, destination: cdn, "
        "after: {bytes: 16KiB, direction: down}")))
    rule = policy.rules[0]
    assert (rule.protocols, rule.ech, rule.alpn, rule.destination) == (("quic", "tls"), "present", ("h2", "h3"), "cdn")
    assert (rule.trigger.unit, rule.trigger.count, rule.trigger.direction) == ("bytes", 16384, "down")
    assert load_policy(write(tmp_path, PLAYBOOK_RULE.format("action: block, protocol: any"))).rules[0].protocols == ()
    assert policy.destinations.classify("198.51.100.7")[0].name == "cdn"


def test_explain_prints_each_condition_it_checked(tmp_path):
    import subprocess
    import sys
    path = write(tmp_path, PLAYBOOK_RULE.format("action: freeze, tls: {ech: present, alpn: [h2]}, destination: cdn, "
                                                "after: {bytes: 16KiB, direction: down}"))

    def explain(*argv):
        return subprocess.run([sys.executable, "-m", "sluice", "explain", "--policy", str(path),
                               "--client", "192.0.2.7", *argv], capture_output=True, text=True, check=True).stdout
    out = explain("--server", "198.51.100.9", "--ech", "--alpn", "h3,h2")
    assert "rule a: applies (server 198.51.100.9 in destinations cdn (198.51.100.0/24); ECH present; ALPN offers h2)" \
        in out
    assert "verdict freeze, after 16384 bytes down by rule a" in out
    assert "rule a: skipped, ECH is absent, not present" in explain("--server", "198.51.100.9", "--name", "x.example")
    assert "rule a: skipped, server 192.0.2.9 is in no destination set, not in cdn" in explain("--server", "192.0.2.9")


def test_explain_judges_a_flow_without_a_name_at_its_opening_packet(tmp_path):
    import subprocess
    import sys
    path = write(tmp_path, "version: 1\ndestinations:\n  cdn: {prefixes: [198.51.100.0/24]}\n  banned: "
                           "{prefixes: [203.0.113.0/24]}\nrules:\n"
                           "  - {name: ok, action: allow, domains: [ok.example]}\n"
                           "  - {name: banned, action: block, destination: banned}\n"
                           "  - {name: cdn, action: freeze, destination: cdn, after: {bytes: 16KiB, direction: down}}\n")

    def explain(*argv):
        return subprocess.run([sys.executable, "-m", "sluice", "explain", "--policy", str(path),
                               "--client", "192.0.2.7", *argv], capture_output=True, text=True, check=True).stdout
    ssh = explain("--server", "198.51.100.9", "--protocol", "other", "--port", "22")
    assert "at its opening packet, before any name: rule cdn: applies (server 198.51.100.9 in destinations cdn" in ssh
    assert "verdict freeze, after 16384 bytes down by rule cdn" in ssh
    named = explain("--server", "198.51.100.9", "--name", "ok.example")
    assert "rule cdn holds until a name is read, which judges it again" in named
    assert "verdict allow by rule ok" in named
    banned = explain("--server", "203.0.113.9", "--name", "ok.example")
    assert "rule banned settles it there" in banned and "verdict block by rule banned" in banned
    # A flow sluice did not see open is judged by its name alone; with none, it passes.
    assert "verdict pass" in explain("--server", "203.0.113.9", "--protocol", "other", "--no-syn")


def test_more_alpn_ids_than_the_data_plane_holds_are_refused(tmp_path):
    rules = "".join(f"  - {{name: r{i}, action: block, tls: {{alpn: [id{i}]}}}}\n" for i in range(33))
    assert any("the rules name 33 ALPN protocol ids; at most 32" in p
               for p in problems(tmp_path, "version: 1\nrules:\n" + rules))


def test_a_bad_playbook_policy_is_one_line_and_exit_2(tmp_path):
    import subprocess
    import sys
    bad = write(tmp_path, PLAYBOOK_RULE.format("action: freeze, destination: cdn, after: {bytes: lots, direction: down}"))
    refused = subprocess.run([sys.executable, "-m", "sluice", "validate", str(bad)],
                             capture_output=True, text=True)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [f"{bad}:5:64: bytes: not a size: 'lots' (use a number and B, KB, "
                                                   f"MB, GB, KiB, MiB or GiB, e.g. 64KiB)"]


@pytest.mark.parametrize("text", [
    "version: 1\nrules:\n  - {name: a, action: explode, domains: [x.example]}\n",
    "version: 1\nrules:\n  - {name: a, action: block}\n",
    "version: 1\nrules:\n  - {name: a, action: block, domains: [x.example], colour: red}\n",
    "version: 1\nrules:\n  - {name: a, action: throttle, rate: 5 furlongs, domains: [x.example]}\n",
])
def test_refused_policies_are_refused_by_the_schema_too(tmp_path, text):
    with pytest.raises(PolicyError):
        load_policy(write(tmp_path, text))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(yaml.safe_load(text), SCHEMA)


labels = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=20)
names = st.lists(labels, min_size=1, max_size=5).map(".".join)


@given(st.lists(names.map(str.encode), min_size=1, max_size=50))
def test_vectorised_hashes_equal_the_reference(batch):
    fnv, mix = name_hashes_many(batch)
    assert [(int(a), int(b)) for a, b in zip(fnv, mix)] == [name_hashes(n) for n in batch]


@given(names)
def test_normalisation_is_idempotent(name):
    once = normalise(name.upper().encode() + b".")
    assert once == name.encode() and normalise(once) == once


def test_validate_command_exit_status_and_messages(tmp_path):
    import subprocess
    import sys
    good = write(tmp_path, "version: 1\nrules:\n  - {name: a, action: block, domains: [x.example]}\n", "good.yaml")
    bad = write(tmp_path, "version: 1\nrules:\n  - {name: a, action: block, domains: [x..example]}\n", "bad.yaml")
    ok = subprocess.run([sys.executable, "-m", "sluice", "validate", str(good)], capture_output=True, text=True)
    assert ok.returncode == 0 and "valid, 1 rule naming 1 domain" in ok.stdout
    refused = subprocess.run([sys.executable, "-m", "sluice", "validate", str(bad)],
                             capture_output=True, text=True)
    assert refused.returncode == 2
    assert f"{bad}:3:40: 'x..example' has an empty label" in refused.stderr


def test_stable_ids_carry_the_rule_sets_over_with_the_renumbered_rules(tmp_path):
    """A reload keeps rule ids by name; the rule sets the checked policy
    computed come along (not computed twice) and name the rules by their
    new ids, as rule sets computed afresh would."""
    from sluice import precedence
    from sluice.policy import with_stable_ids
    policy = load_policy(write(tmp_path, """\
version: 1
classes:
  mobile: {prefixes: [203.0.113.0/24]}
rules:
  - {name: open-cdn, action: allow, domains: [cdn.example.com]}
  - {name: slow-mobile, action: throttle, rate: 1mbit, domains: [example.com, video.example], class: mobile}
  - {name: block-all, action: block, domains: [example.com, ads.example]}
"""))
    assert "_rule_sets" in policy.__dict__, "the checked policy no longer computes its rule sets"
    stable, ids = with_stable_ids(policy, {"block-all": 7, "open-cdn": 9})
    assert [rule.id for rule in stable.rules] == [9, 10, 7]
    carried = stable.rule_sets()
    assert carried is not policy.rule_sets()
    afresh = precedence.compile_rule_sets(stable.rules, {c.name: c.id for c in stable.classes.classes})
    assert carried == afresh
    assert all(rule in stable.rules for members in carried.sets.values() for rule in members)
    assert {rule.id for members in carried.sets.values() for rule in members} == {7, 9, 10}
