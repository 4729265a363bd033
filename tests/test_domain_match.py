"""Domain matching in the kernel: label boundaries, specificity, and scale.

Names go into real ClientHellos; the verdict of the real program says which
rule matched (each rule here has its own action, and rule_stats says which
rule counted the flow).
"""

import pytest

from helpers import judge, needs_root
from packets import CLIENT_V4, client_hello

pytestmark = [pytest.mark.bpf, needs_root]

POLICY = """\
version: 1
rules:
  - name: twimg
    action: block
    domains: [twimg.com]
  - name: tco
    action: block
    domains: [t.co]
  - name: exact
    action: block
    exact: [exact.example]
  - name: example-throttle
    action: throttle
    rate: 1mbit
    domains: [example.com]
  - name: cdn-block
    action: block
    domains: [cdn.example.com]
  - name: www-exact-throttle
    action: throttle
    rate: 1mbit
    exact: [www.cdn.example.com]
  - name: inner-block
    action: block
    domains: [inner.exempt.example]
  - name: exempt-allow
    action: allow
    domains: [exempt.example]
"""


@pytest.fixture(scope="module")
def dp(make_datapath):
    return make_datapath(POLICY)


def matched_rule(dp, name: bytes) -> str | None:
    """Which rule classified a flow for `name` (None: no rule)."""
    before = dp.rule_stats()
    judge(dp, client_hello(name))
    after = dp.rule_stats()
    moved = [rule_id for rule_id in after if after[rule_id]["flows"] != before[rule_id]["flows"]]
    assert len(moved) == 1
    rule = dp.policy.rule_by_id(moved[0])
    return rule.name if rule else None


@pytest.mark.parametrize("name, rule", [
    (b"twimg.com", "twimg"),
    (b"pbs.twimg.com", "twimg"),
    (b"a.b.c.twimg.com", "twimg"),
    (b"nottwimg.com", None),
    (b"twimg.com.evil.example", None),
    (b"twimg.co", None),
    (b"wimg.com", None),
    (b"t.co", "tco"),
    (b"x.t.co", "tco"),
    (b"microsoft.com", None),
    (b"reddit.com", None),
    (b"t.com", None),
    (b"at.co", None),
    (b"exact.example", "exact"),
    (b"sub.exact.example", None),
    (b"EXACT.Example.", "exact"),
    (b"example.com", "example-throttle"),
    (b"www.example.com", "example-throttle"),
    (b"cdn.example.com", "cdn-block"),
    (b"x.cdn.example.com", "cdn-block"),
    (b"www.cdn.example.com", "www-exact-throttle"),
    (b"a.www.cdn.example.com", "cdn-block"),
    (b"com", None),
    # An exemption wins over a more specific rule, whatever the order.
    (b"inner.exempt.example", "exempt-allow"),
    (b"x.inner.exempt.example", "exempt-allow"),
    (b"exempt.example", "exempt-allow"),
])
def test_label_boundaries_and_most_specific_rule(dp, name, rule):
    assert matched_rule(dp, name) == rule
    python_side = dp.policy.decide(name, CLIENT_V4).rule
    assert (python_side.name if python_side else None) == rule, "Policy.decide agrees with the kernel"


def test_verdicts_follow_the_rule(dp):
    assert judge(dp, client_hello(b"cdn.example.com")).verdict == "drop"
    assert judge(dp, client_hello(b"www.cdn.example.com")).verdict == "pass"
    assert judge(dp, client_hello(b"nottwimg.com")).verdict == "pass"


def test_large_policy_matches_its_names_and_not_look_alikes(make_datapath, tmp_path):
    names = [f"site{i}.feed{i % 101}.example" for i in range(100_000)]
    (tmp_path / "feed.txt").write_text("\n".join(names) + "\n")
    dp = make_datapath(f"version: 1\nrules:\n  - {{name: feed, action: block, domains_file: {tmp_path}/feed.txt}}\n")
    for i in range(0, 100_000, 9973):
        assert judge(dp, client_hello(f"www.site{i}.feed{i % 101}.example".encode())).verdict == "drop"
        assert judge(dp, client_hello(f"xsite{i}.feed{i % 101}.example".encode())).verdict == "pass"
        assert judge(dp, client_hello(f"feed{i % 101}.example".encode())).verdict == "pass"
