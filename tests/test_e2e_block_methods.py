"""End to end: block methods as real clients see them, in the lab.

curl, Python's ssl module and `openssl s_client` in the client namespace
reach nginx through the edge, where sluice runs with a reset rule, a page
rule and a drop rule. A reset fails the client at once with "connection
reset" and frees the server's socket; a page is an HTTP 451 with the
rule's body; a drop leaves the client to its own timeout. How long each
took is printed (pytest -s); the figures belong in the README, not in the
assertions, which allow a generous second.
"""

import os

import pytest

from helpers import block_methods_policy, enforcing, rule_stats

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and XDP need root")]

POLICY = block_methods_policy("domains: [blocked.example]", "exact: [exact.example]", "exact: [video.example]")
FAST_FAILURE_S = 1.0        # a reset is answered from the edge; a second is far more than it takes
DROP_TIMEOUT_S = 1.0
_client_ports = iter(range(45000, 45100))


@pytest.fixture(scope="module")
def enforced(lab, make_datapath):
    datapath = make_datapath(POLICY)
    with enforcing(lab, datapath, server_resets=True):
        yield datapath


def server_sockets_from(lab, port: int, family: int) -> str:
    """The server's established sockets whose peer is the client's `port`."""
    return lab.run_in(lab.server_ns, ["ss", "-Htn", f"-{family}", "state", "established",
                                      f"( dport = :{port} )"]).stdout.strip()


@pytest.mark.parametrize("family", [4, 6])
def test_reset_fails_curl_at_once_with_connection_reset(lab, enforced, family):
    before = rule_stats(enforced, "reset-rule")["resets"]
    result = lab.curl("blocked.example", family=family, timeout=3.0)
    print(f"\nreset, curl over TLS, IPv{family}: failed after {result.seconds * 1000:.0f} ms: {result.error}")
    assert not result.ok
    assert "connection reset" in result.error.lower(), result.error
    assert result.seconds < FAST_FAILURE_S
    assert rule_stats(enforced, "reset-rule")["resets"] > before
    assert lab.curl("open.example", family=family).ok, "other names on the same server pass"


@pytest.mark.parametrize("family", [4, 6])
def test_reset_fails_python_and_openssl_with_connection_reset(lab, enforced, family):
    python = lab.python_tls("blocked.example", family=family, timeout=3.0)
    print(f"\nreset, Python ssl, IPv{family}: {python.seconds * 1000:.0f} ms: {python.error.splitlines()[-1]}")
    assert not python.ok and "ConnectionResetError" in python.error
    assert python.seconds < FAST_FAILURE_S + 1.0      # and the interpreter's start
    openssl = lab.openssl_tls("cdn.blocked.example", family=family, timeout=3.0)
    print(f"reset, openssl s_client, IPv{family}: {openssl.seconds * 1000:.0f} ms: {openssl.error[-200:]}")
    assert not openssl.ok and "errno=104" in openssl.error     # ECONNRESET
    assert openssl.seconds < FAST_FAILURE_S


@pytest.mark.parametrize("family", [4, 6])
def test_the_server_socket_is_gone_after_a_reset_and_stays_after_a_drop(lab, enforced, family):
    port = next(_client_ports)
    reset = lab.curl("blocked.example", family=family, timeout=3.0, extra_args=("--local-port", str(port)))
    assert "connection reset" in reset.error.lower()
    assert server_sockets_from(lab, port, family) == ""
    # The same check sees the socket a drop leaves behind: the server never
    # hears that the client gave up.
    port = next(_client_ports)
    dropped = lab.curl("video.example", family=family, timeout=DROP_TIMEOUT_S,
                       extra_args=("--local-port", str(port)))
    assert not dropped.ok and dropped.exit_code == 28
    assert server_sockets_from(lab, port, family) != ""


@pytest.mark.parametrize("family", [4, 6])
def test_drop_leaves_curl_to_its_timeout(lab, enforced, family):
    result = lab.curl("video.example", family=family, timeout=DROP_TIMEOUT_S)
    print(f"\ndrop, curl over TLS, IPv{family}: failed after {result.seconds * 1000:.0f} ms: {result.error}")
    assert result.exit_code == 28 and "timed out" in result.error.lower()
    assert result.seconds >= DROP_TIMEOUT_S


@pytest.mark.parametrize("family", [4, 6])
def test_page_answers_plain_http_with_451_and_the_body(lab, enforced, family):
    before = rule_stats(enforced, "page-rule")["pages"]
    result = lab.curl("exact.example", scheme="http", family=family, timeout=3.0, extra_args=("-i",))
    print(f"\npage, curl over HTTP, IPv{family}: HTTP {result.http_code} after {result.seconds * 1000:.0f} ms")
    assert result.exit_code == 0 and result.http_code == 451
    head, _, body = result.body.partition("\n\n")      # text mode: CRLF read as LF
    assert head.startswith("HTTP/1.1 451 Unavailable For Legal Reasons")
    assert 'Link: <https://authority.example/orders/42>; rel="blocked-by"' in head
    assert body == "Blocked by order 42.\n"
    assert result.seconds < FAST_FAILURE_S
    assert rule_stats(enforced, "page-rule")["pages"] > before


def test_page_resets_tls(lab, enforced):
    result = lab.curl("exact.example", timeout=3.0)
    print(f"\npage, curl over TLS: reset after {result.seconds * 1000:.0f} ms: {result.error}")
    assert "connection reset" in result.error.lower() and result.seconds < FAST_FAILURE_S


def test_resets_and_pages_are_exported_per_rule(lab, enforced):
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry, generate_latest

    from sluice.metrics import SluiceCollector
    registry = CollectorRegistry()
    registry.register(SluiceCollector(SimpleNamespace(datapath=enforced, policy=enforced.policy, loaded_at=0.0,
                                                      policy_digest="", reloads={"success": 0, "failure": 0})))
    lab.curl("blocked.example", timeout=3.0)
    lab.curl("exact.example", scheme="http", timeout=3.0)
    lines = generate_latest(registry).decode().splitlines()

    def exported(family, rule):
        return next(float(line.rsplit(" ", 1)[1]) for line in lines
                    if line.startswith(family + "{") and f'rule="{rule}"' in line)
    assert exported("sluice_rule_resets_total", "reset-rule") >= 1
    assert exported("sluice_rule_pages_total", "page-rule") >= 1
    assert exported("sluice_rule_resets_total", "drop-rule") == 0
