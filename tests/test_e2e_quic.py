"""QUIC end to end: a real aioquic client and server through the lab's edge.

The data plane hands the client's Initial packets to the controller's QUIC
code (controller/quic_flows.py), which decrypts them, reads the SNI and
writes the verdict into the flow table, as `sluice run` does.
"""

import os
import subprocess
import sys

import pytest

from helpers import enforcing, polling_rings
from sluice.lab import SERVER_V4, SERVER_V6, Lab
from sluice.quic_flows import QuicFlows

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and XDP need root")]

QUIC_PORT = 443
ALPN = "sluice-test"
POLICY = """\
version: 1
rules:
  - {name: block-quic-name, action: block, domains: [blocked.example]}
  - {name: slow-but-no-quic, action: throttle, rate: 1mbit, quic: block, domains: [slow.example]}
  - {name: watched, action: block, mode: monitor, domains: [watched.example]}
"""
SERVER = f"""
import asyncio, sys
from aioquic.asyncio import serve
from aioquic.quic.configuration import QuicConfiguration

async def echo(reader, writer):
    writer.write(await reader.read())
    writer.write_eof()

async def main():
    configuration = QuicConfiguration(is_client=False, alpn_protocols=[{ALPN!r}])
    configuration.load_cert_chain(sys.argv[1], sys.argv[2])
    # "::" takes IPv4 too, as v4-mapped addresses.
    await serve("::", {QUIC_PORT}, configuration=configuration,
                stream_handler=lambda r, w: asyncio.ensure_future(echo(r, w)))
    print("ready", flush=True)
    await asyncio.Future()

asyncio.run(main())
"""
CLIENT = f"""
import asyncio, sys
from aioquic.asyncio import connect
from aioquic.quic.configuration import QuicConfiguration

async def main(address, name, cafile):
    configuration = QuicConfiguration(is_client=True, alpn_protocols=[{ALPN!r}], server_name=name)
    configuration.load_verify_locations(cafile)
    async with connect(address, {QUIC_PORT}, configuration=configuration) as connection:
        reader, writer = await connection.create_stream()
        writer.write(b"ping " + name.encode())
        writer.write_eof()
        print((await reader.read()).decode())

asyncio.run(asyncio.wait_for(main(*sys.argv[1:4]), float(sys.argv[4])))
"""


@pytest.fixture(scope="module")
def lab():
    with Lab() as built:
        server = subprocess.Popen(["ip", "netns", "exec", built.server_ns, sys.executable, "-c", SERVER,
                                   str(built.workdir / "server.pem"), str(built.workdir / "server.key")],
                                  stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline().strip() == "ready"
        yield built
        server.kill()
        server.wait()


@pytest.fixture(scope="module")
def enforced(lab, make_datapath):
    datapath = make_datapath(POLICY, events=True)
    settled = []
    quic = QuicFlows(datapath, on_settled=lambda key, hi, hello, rule: settled.append((hello and hello.sni, rule)))
    with enforcing(lab, datapath), polling_rings(datapath):
        yield datapath, quic, settled


def quic_get(lab, name: str, family: int = 4, timeout: float = 4.0) -> bool:
    """A QUIC handshake and one echoed stream, from the client namespace."""
    address = SERVER_V6 if family == 6 else SERVER_V4
    result = subprocess.run(["ip", "netns", "exec", lab.client_ns, sys.executable, "-c", CLIENT,
                             address, name, lab.ca_path, str(timeout)],
                            capture_output=True, text=True, timeout=timeout + 20)
    return result.returncode == 0 and result.stdout.strip() == f"ping {name}"


@pytest.mark.parametrize("family", [4, 6])
def test_quic_is_classified_by_its_sni_and_blocked_names_fail(lab, enforced, family):
    datapath, quic, settled = enforced
    assert quic_get(lab, "open.example", family), "a name no rule covers works over QUIC"
    assert not quic_get(lab, "blocked.example", family)
    assert not quic_get(lab, "cdn.blocked.example", family)
    assert quic_get(lab, "notblocked.example", family), "a look-alike must pass"
    names = [name for name, _rule in settled]
    assert {"open.example", "blocked.example", "cdn.blocked.example", "notblocked.example"} <= set(names)
    assert dict(settled)["blocked.example"].name == "block-quic-name"


def test_quic_block_makes_clients_fall_back_to_tcp_where_the_rule_throttles(lab, enforced):
    datapath, quic, settled = enforced
    assert not quic_get(lab, "slow.example")
    assert lab.curl("slow.example", timeout=3.0).ok, "over TCP the rule throttles, and the page loads"
    rule = datapath.policy.rule_by_name("slow-but-no-quic")
    assert quic.flows_by_rule[rule.id] >= 1


def test_monitor_mode_counts_a_quic_flow_and_lets_it_pass(lab, enforced):
    datapath, quic, settled = enforced
    rule = datapath.policy.rule_by_name("watched")
    before = quic.flows_by_rule[rule.id]
    assert quic_get(lab, "watched.example")
    assert quic.flows_by_rule[rule.id] == before + 1
    assert datapath.counters()["quic_datagrams"] >= 1
    assert quic.outcomes["sni_found"] >= 1
