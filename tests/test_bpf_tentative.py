"""Client bytes sent at a low TTL, held until the server acknowledges them (bpf/tentative.h), in the real program.

A fake-TTL decoy (zapret's --dpi-desync-ttl, ByeDPI's --fake with --ttl,
GoodbyeDPI) is sent to expire before the server; zapret's --orig-ttl sends
every data segment of the real connection at a TTL as low, which still
reaches a server a few hops away. sluice cannot tell them apart by the TTL:
it holds such bytes tentatively, and reads them once the server's ACK says
it received them. Decoys still lose: a real copy at a higher TTL replaces
them, and nothing the server did not acknowledge names a flow. Nor does an
ACK the client forged in the server's name: on a box with two arms it comes
in on the client's interface, not the server's.
"""

import ctypes
import os
import socket
import subprocess

import pytest

from helpers import HOOKS, AtHook, classify, needs_root
from test_bpf_evasion import HELLOS, POLICY, SERVER_ISN, STREAMS, Flow, cut, evasions, moved
from test_bpf_flows import socket_port
from test_bpf_reassembly import ISN

pytestmark = [pytest.mark.bpf, needs_root]

SYN_TTL = 64            # tcp_frame's, the SYN's and the server's
REAL_TTL = 8            # zapret's --orig-ttl=8: far below the SYN's, past the margin of 4
FAKE_TTL = 1            # a decoy's, which expires at the first hop
REAL, FAKE = "blocked.example", "allowed.example"
FAMILIES = pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
KINDS = pytest.mark.parametrize("stream", list(STREAMS), ids=list(STREAMS))


@pytest.fixture(scope="module")
def dp(make_datapath):
    datapath = make_datapath(POLICY, events=True)
    datapath.names = {}
    event_type = ctypes.POINTER(datapath.table("event_buffers").sLeaf)

    def note(_ctx, data, _size):
        event = ctypes.cast(data, event_type).contents
        port = socket_port(event.key.port_hi if event.client_is_hi else event.key.port_lo)
        datapath.names[port] = bytes(event.name[:event.name_len]).decode()
    datapath.table("events").open_ring_buffer(note)
    return datapath


def name_of(dp, flow: Flow) -> str | None:
    """The name the flow was judged by (its event's), None while it is not judged."""
    dp.consume_rings()
    return dp.names.get(flow.port)


def send_at(flow: Flow, ttl: int, pieces) -> list[str]:
    """pieces: (offset from the stream's start, bytes), sent at this TTL (hop limit)."""
    return [flow.send_raw(payload, seq=(ISN + 1 + offset) % 2**32, ttl=ttl) for offset, payload in pieces]


def server_acks(flow: Flow, upto: int) -> str:
    """The server's bare ACK of the client's stream up to offset `upto`."""
    return flow.reply(b"", flags="A", ack=(ISN + 1 + upto) % 2**32)


def confirmed(dp) -> int:
    return dp.counters()["low_ttl_confirmed"]


@FAMILIES
@KINDS
@pytest.mark.parametrize("pieces", [1, 3])
def test_a_hello_sent_low_that_the_server_acknowledges_is_read(dp, v6, stream, pieces):
    """zapret's --orig-ttl: every data segment far below the SYN's TTL. The
    server's ACK of them names the flow; its next client segment, at the
    same low TTL now known to arrive, is judged (dropped)."""
    real, _, port = STREAMS[stream]
    flow, before = Flow(dp, v6, port), confirmed(dp)
    at = [len(real) * k // pieces for k in range(1, pieces)]
    assert send_at(flow, REAL_TTL, cut(real, *at)) == ["pass"] * pieces
    assert name_of(dp, flow) is None
    assert server_acks(flow, len(real)) == "pass"       # the verdict holds from the next packet on
    assert name_of(dp, flow) == REAL
    assert confirmed(dp) == before + 1
    assert send_at(flow, REAL_TTL, [(len(real), b"more")]) == ["drop"]


@FAMILIES
def test_an_ack_of_part_of_the_hello_reads_that_part(dp, v6):
    """The server acknowledges what it holds in order: a part confirmed,
    cut before the name, does not name the flow; the rest, once
    acknowledged, does."""
    real = HELLOS["1.8KB"]
    name = real.index(REAL.encode())
    flow = Flow(dp, v6)
    send_at(flow, REAL_TTL, cut(real, name))
    assert server_acks(flow, name) == "pass"
    assert name_of(dp, flow) is None
    assert send_at(flow, REAL_TTL, [(len(real), b"more")]) == ["pass"]   # no name yet
    assert server_acks(flow, len(real)) == "pass"
    assert name_of(dp, flow) == REAL


@FAMILIES
@KINDS
@pytest.mark.parametrize("order", ["fake-first", "fake-after"])
def test_a_fake_below_the_real_low_copy_loses(dp, v6, stream, order):
    """A decoy at TTL 1 and the real hello at TTL 8, both below the margin:
    the higher TTL goes at least as far as the lower, so its bytes are the
    ones kept, whichever came first, and the ACK reads them."""
    real, fake, port = STREAMS[stream]
    flow = Flow(dp, v6, port)
    sends = [(FAKE_TTL, fake), (REAL_TTL, real)]
    for ttl, hello in sends if order == "fake-first" else sends[::-1]:
        assert send_at(flow, ttl, [(0, hello)]) == ["pass"]
    assert server_acks(flow, len(real)) == "pass"
    assert name_of(dp, flow) == REAL


@FAMILIES
@KINDS
@pytest.mark.parametrize("fake_length", ["same", "longer", "shorter"])
def test_a_fake_at_ttl_1_then_the_real_at_the_syns_ttl(dp, v6, stream, fake_length):
    """ByeDPI --fake -1 --ttl 1, zapret's fake with --dpi-desync-ttl: the
    real copy reaches the server at the SYN's TTL and names the flow at
    once; the server's ACK after it changes nothing."""
    real, fake, port = STREAMS[stream]
    fake = {"same": fake, "longer": fake + b"x" * 300, "shorter": fake[:len(fake) // 2]}[fake_length]
    flow, before = Flow(dp, v6, port), confirmed(dp)
    assert send_at(flow, FAKE_TTL, [(0, fake)]) == ["pass"]
    assert send_at(flow, SYN_TTL, [(0, real)]) == ["drop"]
    assert name_of(dp, flow) == REAL
    server_acks(flow, len(real))
    assert name_of(dp, flow) == REAL and confirmed(dp) == before


@FAMILIES
def test_hostfakesplit_fakes_at_ttl_1_between_real_pieces(dp, v6):
    """zapret's hostfakesplit: the hello cut around the name, each real
    piece followed by a fake of it at TTL 1 with another name. The real
    pieces, at the SYN's TTL, replace the fakes' bytes."""
    real, fake, _ = STREAMS["0.5KB"]
    name = real.index(REAL.encode())
    flow = Flow(dp, v6)
    verdicts = []
    for (offset, piece), (_, decoy) in zip(cut(real, name, name + 9), cut(fake, name, name + 9)):
        verdicts += send_at(flow, FAKE_TTL, [(offset, decoy)]) + send_at(flow, SYN_TTL, [(offset, piece)])
    assert verdicts[-1] == "drop" and name_of(dp, flow) == REAL


@FAMILIES
def test_a_low_ttl_copy_names_nothing_until_the_server_acknowledges_it(dp, v6):
    """A lone low-TTL copy, and server segments that acknowledge none of
    it: nothing names the flow. What the server acknowledges it received,
    decoy or not: then that names it."""
    real, fake, _ = STREAMS["0.5KB"]
    flow, before = Flow(dp, v6), confirmed(dp)
    assert send_at(flow, FAKE_TTL, [(0, fake)]) == ["pass"]
    assert server_acks(flow, 0) == "pass"
    assert flow.reply(b"banner", ack=(ISN + 1) % 2**32) == "pass"
    assert name_of(dp, flow) is None and confirmed(dp) == before
    assert server_acks(flow, len(fake)) == "pass"
    assert name_of(dp, flow) == FAKE and confirmed(dp) == before + 1


@FAMILIES
@pytest.mark.parametrize("past", [1, 1000, 2**20])
def test_an_ack_past_what_the_client_sent_confirms_nothing(dp, v6, past):
    """An ACK of bytes sluice never saw the client send is no ACK the
    server could have sent: nothing is confirmed by it. The true one is."""
    real = STREAMS["0.5KB"][0]
    flow, before = Flow(dp, v6), confirmed(dp)
    assert send_at(flow, REAL_TTL, [(0, real)]) == ["pass"]
    assert server_acks(flow, len(real) + past) == "pass"
    assert name_of(dp, flow) is None and confirmed(dp) == before
    assert server_acks(flow, len(real)) == "pass"
    assert name_of(dp, flow) == REAL


@FAMILIES
def test_an_ack_across_a_gap_the_client_never_filled_confirms_nothing(dp, v6):
    """Bytes the server cannot have received (no copy of them came) stand
    between the stream's start and the ACK: nothing is confirmed."""
    real = HELLOS["1.8KB"]
    flow, before = Flow(dp, v6), confirmed(dp)
    send_at(flow, REAL_TTL, [(0, real[:600]), (900, real[900:])])
    assert server_acks(flow, len(real)) == "pass"
    assert name_of(dp, flow) is None and confirmed(dp) == before
    send_at(flow, REAL_TTL, [(600, real[600:900])])
    assert server_acks(flow, len(real)) == "pass"
    assert name_of(dp, flow) == REAL


@FAMILIES
def test_a_lower_ttl_after_the_confirmation_is_refused_again(dp, v6):
    """Once the server acknowledged TTL 8, TTL 8 is the flow's floor: a
    decoy at TTL 1 after that is still refused, and counted."""
    real, fake, _ = STREAMS["0.5KB"]
    name = real.index(REAL.encode())
    flow = Flow(dp, v6)
    assert send_at(flow, REAL_TTL, [(0, real[:name])]) == ["pass"]
    assert server_acks(flow, name) == "pass"
    before = evasions(dp)
    assert send_at(flow, FAKE_TTL, [(name, fake[name:])]) == ["pass"]
    assert moved(before, evasions(dp)) == {"low_ttl": 1}
    assert send_at(flow, REAL_TTL, [(name, real[name:])]) == ["drop"]
    assert name_of(dp, flow) == REAL


def test_on_evasion_block_still_blocks_at_the_first_low_ttl_segment(make_datapath):
    blocking = make_datapath(POLICY + "inspection: {on_evasion: block}\n")
    flow = Flow(blocking, False)
    assert send_at(flow, REAL_TTL, [(0, STREAMS["0.5KB"][0][:100])]) == ["drop"]
    assert server_acks(flow, 100) == "drop"


def test_the_confirmations_are_exported_to_prometheus(dp):
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry

    from sluice.metrics import SluiceCollector
    registry = CollectorRegistry()
    registry.register(SluiceCollector(SimpleNamespace(datapath=dp, policy=dp.policy, loaded_at=0.0,
                                                      policy_digest="", reloads={"success": 0, "failure": 0})))
    before = registry.get_sample_value("sluice_low_ttl_confirmed_total")
    real = STREAMS["0.5KB"][0]
    flow = Flow(dp, False)
    send_at(flow, REAL_TTL, [(0, real)])
    server_acks(flow, len(real))
    assert registry.get_sample_value("sluice_low_ttl_confirmed_total") == before + 1


@pytest.fixture(scope="module")
def arms():
    """A router's two arms, interfaces of this network namespace: the
    ifindexes of the client's side and the server's (a veth pair's ends:
    the kernel may have no dummy device; nothing is sent over them)."""
    names = [f"slarm{os.getpid() % 10**6}{side}" for side in "cs"]
    try:
        subprocess.run(["ip", "link", "add", names[0], "type", "veth", "peer", "name", names[1]], check=True)
        yield tuple(socket.if_nametoindex(name) for name in names)
    finally:
        subprocess.run(["ip", "link", "del", names[0]], check=False, capture_output=True)


class ArmedFlow(Flow):
    """A Flow through a box with two arms, at one hook: the client's frames
    come in on client_if, the server's on server_if (the same one: a router
    on a stick). forge() is the client's own "server" ACK, which comes in
    where the client's frames do."""

    def __init__(self, dp, v6: bool, dport: int = 443, *, client_if: int, server_if: int, syn_ack: bool = True):
        self.client_if, self.server_if, self.forging = client_if, server_if, False
        super().__init__(dp, v6, dport, syn_ack=syn_ack)

    def run(self, frame: bytes, from_server: bool) -> str:
        return classify(self.dp, frame, ifindex=self.server_if if from_server and not self.forging
                        else self.client_if).verdict

    def forge(self, upto: int) -> str:
        self.forging = True
        try:
            return server_acks(self, upto)
        finally:
            self.forging = False


@pytest.fixture(scope="module", params=HOOKS)
def hooked(request, dp):
    return AtHook(dp, request.param)


@FAMILIES
@KINDS
def test_a_decoy_confirmed_by_the_clients_own_server_ack_is_not_read(hooked, arms, v6, stream):
    """A decoy at TTL 1 (allowed name), then an ACK of it in the server's
    name sent by the client: it comes in on the client's arm, where the
    server's SYN-ACK did not. It confirms nothing, and is counted; the real
    hello at the SYN's TTL names the flow."""
    real, fake, port = STREAMS[stream]
    client_if, server_if = arms
    flow = ArmedFlow(hooked, v6, port, client_if=client_if, server_if=server_if)
    before, counted = confirmed(hooked), evasions(hooked)
    assert send_at(flow, FAKE_TTL, [(0, fake)]) == ["pass"]
    assert flow.forge(len(fake)) == "pass"
    assert name_of(hooked, flow) is None and confirmed(hooked) == before
    assert moved(counted, evasions(hooked)) == {"low_ttl": 1, "forged_server": 1}
    assert send_at(flow, SYN_TTL, [(0, real)]) == ["drop"]
    assert name_of(hooked, flow) == REAL


@FAMILIES
def test_the_real_servers_ack_from_its_arm_still_confirms(hooked, arms, v6):
    """zapret's --orig-ttl through the same box: the forged ACK confirms
    nothing, the server's own, from its arm, reads the hello."""
    real = STREAMS["0.5KB"][0]
    client_if, server_if = arms
    flow = ArmedFlow(hooked, v6, client_if=client_if, server_if=server_if)
    before = confirmed(hooked)
    assert send_at(flow, REAL_TTL, cut(real, 100)) == ["pass", "pass"]
    assert flow.forge(len(real)) == "pass"
    assert name_of(hooked, flow) is None and confirmed(hooked) == before
    assert server_acks(flow, len(real)) == "pass"
    assert name_of(hooked, flow) == REAL and confirmed(hooked) == before + 1
    assert send_at(flow, REAL_TTL, [(len(real), b"more")]) == ["drop"]


@FAMILIES
def test_a_forged_ack_before_the_servers_syn_ack_is_found_out_by_it(hooked, arms, v6):
    """A raw sender's decoy and forged ACK, both before the server's
    SYN-ACK came: nothing yet tells the box from one on a stick, and the
    decoy is read. The SYN-ACK, from the server's arm, says that ACK was
    the client's: the flow is judged afresh, each client segment held
    until the server's own ACK confirms it, and the real hello names it."""
    real, fake, _ = STREAMS["0.5KB"]
    client_if, server_if = arms
    flow = ArmedFlow(hooked, v6, client_if=client_if, server_if=server_if, syn_ack=False)
    assert send_at(flow, FAKE_TTL, [(0, fake)]) == ["pass"]
    assert flow.forge(len(fake)) == "pass"
    assert name_of(hooked, flow) == FAKE
    counted = evasions(hooked)
    assert flow.reply(b"", seq=SERVER_ISN, flags="SA") == "pass"
    assert moved(counted, evasions(hooked)) == {"forged_server": 1}
    assert send_at(flow, SYN_TTL, [(0, real)]) == ["pass"]         # held until the server says
    assert server_acks(flow, len(real)) == "pass"
    assert name_of(hooked, flow) == REAL
    assert send_at(flow, SYN_TTL, [(len(real), b"more")]) == ["drop"]


@FAMILIES
def test_a_forged_server_segment_leaves_the_servers_numbers_known(hooked, arms, v6):
    """A "server" segment from the client's arm far past the server's
    numbers would make them unknown, and turn the ACK-number check off:
    it says nothing of the server, and a bad-ACK decoy is still refused."""
    real, fake, _ = STREAMS["0.5KB"]
    client_if, server_if = arms
    flow = ArmedFlow(hooked, v6, client_if=client_if, server_if=server_if)
    flow.forging = True
    assert flow.reply(b"x", seq=(flow.server_next + 2**31) % 2**32, flags="A") == "pass"
    flow.forging = False
    before = evasions(hooked)
    assert flow.send_decoy("bad_ack", 0, fake) == "pass"
    assert moved(before, evasions(hooked)) == {"bad_ack": 1}
    assert send_at(flow, SYN_TTL, [(0, real)]) == ["drop"]
    assert name_of(hooked, flow) == REAL


@FAMILIES
def test_on_one_interface_the_servers_ack_is_taken_as_before(hooked, arms, v6):
    """A router on a stick: both directions come in on one interface, and
    nothing tells the client's forged ACK from the server's. What it
    acknowledges names the flow, as without the check (a limit:
    docs/policy.md)."""
    real, fake, _ = STREAMS["0.5KB"]
    flow = ArmedFlow(hooked, v6, client_if=arms[0], server_if=arms[0])
    before, counted = confirmed(hooked), evasions(hooked)
    assert send_at(flow, FAKE_TTL, [(0, fake)]) == ["pass"]
    assert flow.forge(len(fake)) == "pass"
    assert name_of(hooked, flow) == FAKE
    assert confirmed(hooked) == before + 1 and moved(counted, evasions(hooked)) == {"low_ttl": 1}


@pytest.mark.parametrize("hook", HOOKS)
def test_on_evasion_block_blocks_at_a_forged_server_segment(make_datapath, arms, hook):
    blocking = AtHook(make_datapath(POLICY + "inspection: {on_evasion: block}\n"), hook)
    client_if, server_if = arms
    flow = ArmedFlow(blocking, False, client_if=client_if, server_if=server_if)
    assert flow.forge(0) == "drop"
    assert send_at(flow, SYN_TTL, [(0, STREAMS["0.5KB"][1])]) == ["drop"]
