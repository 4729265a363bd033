# SPDX-License-Identifier: GPL-2.0-only
"""sluice: classify flows by TLS SNI and HTTP Host in XDP, and act on them.

  sluice demo                         build a lab of namespaces, show blocks, tear down
  sluice run                          the same lab, left running with metrics, until Ctrl-C
  sluice run --policy P --iface eth0  enforce P on real interfaces; SIGHUP or editing P reloads it
  sluice status [--json]              what runs where, how full, recent reloads
  sluice stop                         stop, detach, and unpin everything
  sluice validate P                   check a policy without touching the kernel
  sluice explain --policy P --client IP [--name N] [--server IP] [--protocol P] [--ech] [--alpn L] [--at T]
                                      which rule a flow gets, and why
  sluice replay [--policy P] cap.pcap run the real program over captures, offline

Exit status: 0 done; 2 bad input (a policy, a capture, an argument), with one
line per problem on stderr saying which file and line; 1 the machine lacks
what is needed (root or capabilities, bpffs, a free metrics port, another
controller holds the pin root). Input files are read only if they are
regular files of at most 64 MiB (--max-input-size, or SLUICE_MAX_INPUT_BYTES,
raises the limit).
"""

import argparse
import ipaddress
import json
import logging
import os
import queue
import signal
import sys
import time

# Only what validate and explain need is imported here. The handlers that load
# the data plane import datapath, service, demo or replay (and so bcc, which
# takes seconds to import and needs a kernel's headers) inside themselves:
# `sluice validate` then checks a policy on any machine, without bcc or root.
from . import hooks, metrics
from .block_methods import describe_method
from .policies import lab_policy_path
from .policy import PolicyError, check_domain, input_files, load_policy, parse_size, policy_summary

EXIT_POLICY_ERROR = 2
EXIT_FAILURE = 1
POLICY_POLL_SECONDS = 1.0     # how often `run` looks for a changed policy file
SNAPSHOT_SECONDS = 5.0        # how often `run` records flow table fill and top rules for `status`
RING_POLL_MS = 50             # longest wait for the rings between other chores
HEALTH_SECONDS = 3.0          # how often `run` checks its own data plane
STOP_WAIT_SECONDS = 30.0      # how long `sluice stop` waits for the controller to let go of the lock

# Capabilities (bit numbers, linux/capability.h) each command needs; the
# systemd unit grants run's set and nothing more.
CAPABILITIES = {"CAP_SYS_ADMIN": 21, "CAP_NET_ADMIN": 12, "CAP_PERFMON": 38, "CAP_BPF": 39}
LOAD_CAPABILITIES = ("CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN")      # XDP programs need CAP_NET_ADMIN to load
LAB_CAPABILITIES = LOAD_CAPABILITIES + ("CAP_SYS_ADMIN",)           # namespaces

log = logging.getLogger("sluice")


class Interrupted(Exception):
    """SIGINT or SIGTERM before the controller runs: what start did is undone on the way out."""


def interrupt(signum, _frame):
    raise Interrupted(signal.Signals(signum).name)


class Refused(Exception):
    """One line for stderr and the exit status: how a command ends on bad input or a missing need."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def load_policy_or_exit(path: str):
    """Load a policy; on errors print every problem, one a line, and exit 2 before any kernel change."""
    try:
        return load_policy(path)
    except PolicyError as error:
        print(error, file=sys.stderr)
        sys.exit(EXIT_POLICY_ERROR)


def require_capabilities(command: str, needed: tuple[str, ...]) -> None:
    """Refuse (exit 1) before anything starts if the process lacks a capability the command needs."""
    with open("/proc/self/status") as status:
        effective = next(int(line.split()[1], 16) for line in status if line.startswith("CapEff:"))
    missing = [name for name in needed if not effective >> CAPABILITIES[name] & 1]
    if missing:
        raise Refused(f"sluice {command}: needs the capabilities {', '.join(needed)}; missing "
                      f"{', '.join(missing)} (run it as root, or as deploy/sluice.service grants them)",
                      EXIT_FAILURE)


def bind_metrics(args):
    """The exporter's socket, bound before anything is attached or built."""
    try:
        return metrics.bind(args.metrics_address, args.metrics_port)
    except OSError as error:
        where = f"{args.metrics_address}:{args.metrics_port}"
        raise Refused(f"sluice {args.command}: cannot serve metrics on {where}: {error.strerror or error}",
                      EXIT_FAILURE) from None


def cmd_validate(args) -> int:
    policy = load_policy_or_exit(args.policy)
    print(policy_summary(policy))
    return 0


def cmd_explain(args) -> int:
    from . import schedule
    from .rollout import rollout_value
    loaded = load_policy_or_exit(args.policy)
    try:
        at = schedule.parse_timestamp(args.at) if args.at else schedule.now()
        addresses = [ipaddress.ip_address(a) if a else None for a in (args.client, args.server)]
    except ValueError as error:
        raise Refused(f"sluice explain: {error}", EXIT_POLICY_ERROR) from None
    for option, address in zip(("--client", "--server"), addresses):
        if getattr(address, "scope_id", None):
            raise Refused(f"sluice explain: {option} {address}: an address here has no zone "
                          f"(%{address.scope_id}); give the address alone", EXIT_POLICY_ERROR)
    client, server = (str(a) if a else None for a in addresses)
    if args.name is not None:
        _name, wrong = check_domain(args.name)
        if wrong:
            raise Refused(f"sluice explain: --name: {wrong}", EXIT_POLICY_ERROR)
    if args.protocol in ("http", "other") and (args.ech or args.alpn):
        raise Refused(f"sluice explain: --ech and --alpn are ClientHello facts: not with --protocol {args.protocol}",
                      EXIT_POLICY_ERROR)
    if args.protocol == "other" and args.name:
        raise Refused("sluice explain: --name: sluice reads no name from a flow of --protocol other",
                      EXIT_POLICY_ERROR)
    alpn = tuple(a for a in args.alpn.split(",") if a)
    policy = loaded.at(at)
    decision = policy.decide((args.name or "").encode(), client, args.port, not args.no_syn, server=server,
                             protocol=args.protocol, ech=args.ech, alpn=alpn)
    print(f"policy  {policy.path} as it stands at {at.isoformat()}")
    where = (f"class {decision.client_class.name} (prefix {decision.class_prefix})"
             if decision.client_class else "in no class")
    print(f"client  {client}: {where}; rollout position "
          f"{rollout_value(policy.rollout_key, client) / 2**32:.4%}")
    print(f"flow    {args.protocol} to {server or 'a server'} port {args.port}, "
          f"{'opened' if not args.no_syn else 'not seen opened'} by the client")
    if args.protocol in ("tls", "quic"):
        print(f"hello   ECH {'present' if args.ech else 'absent'}; ALPN {', '.join(alpn) or 'none'}")
    print(f"name    {args.name or '(none)'}: " +
          (f"most specific entry {decision.domain}" if decision.domain else "no entry"))
    for number, step in enumerate(decision.steps, start=1):
        print(f"  {number}. {step}")
    rule = decision.rule
    if rule is None:
        print("verdict pass: no rule applies")
    else:
        mode = " (monitor: counted, not enforced)" if rule.monitor else ""
        after = f", {rule.trigger.describe()}" if rule.trigger else ""
        print(f"verdict {rule.action}{after}{mode} by rule {rule.name} ({policy.path}:{rule.line})")
        if rule.action == "block":
            print(f"method  {describe_method(rule)}")
    return 0


def cmd_replay(args) -> int:
    from .replay import CaptureError, check_capture, print_records, replay_all
    require_capabilities("replay", LOAD_CAPABILITIES)
    if args.jobs < 1:
        raise Refused(f"sluice replay: --jobs must be 1 or more, not {args.jobs}", EXIT_POLICY_ERROR)
    policy = load_policy_or_exit(args.policy) if args.policy else None
    several = len(args.capture) > 1
    try:
        for capture in args.capture:
            check_capture(capture)
        for capture, records in replay_all(args.capture, policy, args.jobs, args.fix_checksums):
            print_records(records, args.json, capture=capture if several else None)
    except CaptureError as error:
        raise Refused(f"sluice replay: {error}", EXIT_POLICY_ERROR) from None
    return 0


def cmd_run(args) -> int:
    if not args.iface:
        return lab_command(args, keep_running=True)
    from .netns import NetnsError
    from .service import InputError, Service, SetupError
    from .tc import TcError
    from .xdp_link import AttachError
    if not args.policy:
        raise Refused("sluice run: --policy is required with --iface", EXIT_POLICY_ERROR)
    require_capabilities("run", LOAD_CAPABILITIES)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, interrupt)
    service = Service(args.policy, args.iface, args.netns, args.hook, args.fail_open)
    try:
        loaded = service.check()
    except PolicyError as error:
        print(error, file=sys.stderr)
        return EXIT_POLICY_ERROR
    except InputError as error:
        raise Refused(f"sluice run: {error}", EXIT_POLICY_ERROR) from None
    server = bind_metrics(args)
    try:
        service.start(loaded)
    except Interrupted as signame:
        print(f"sluice run: {signame} while starting; nothing was left attached", file=sys.stderr)
        return 0
    except (SetupError, AttachError, TcError, NetnsError) as error:
        raise Refused(f"sluice run: {error}", EXIT_FAILURE) from None
    except Exception as error:      # bcc or the kernel refused the data plane; start undid its part
        raise Refused(f"sluice run: cannot load the data plane: {str(error).strip() or type(error).__name__}",
                      EXIT_FAILURE) from None
    events = signal_events()
    metrics.serve(service, server)
    log.info("enforcing %s on %s; metrics on http://%s:%d/metrics", args.policy, ", ".join(args.iface),
             args.metrics_address, args.metrics_port)
    return serve_until_stopped(service, events)


def signal_events() -> queue.Queue:
    """From now on SIGHUP queues a reload, SIGINT and SIGTERM a stop."""
    events = queue.Queue()
    signal.signal(signal.SIGHUP, lambda *_: events.put("reload"))
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: events.put("stop"))
    return events


def serve_until_stopped(service, events: queue.Queue) -> int:
    """Reload on SIGHUP or when the policy file changes; stop on SIGINT or SIGTERM
    (0), or when the data plane was damaged under the controller (1)."""
    last_snapshot = last_policy_check = last_health_check = 0.0
    while True:
        # QUIC flows pass until their verdict is written: read the rings often.
        service.poll_events(RING_POLL_MS)
        try:
            event = events.get_nowait()
        except queue.Empty:
            event = None
        if event is None and time.monotonic() - last_policy_check > POLICY_POLL_SECONDS:
            event = "reload" if service.policy_changed() else None
            last_policy_check = time.monotonic()
        if time.monotonic() - last_snapshot > SNAPSHOT_SECONDS:
            service.snapshot()
            last_snapshot = time.monotonic()
        if time.monotonic() - last_health_check > HEALTH_SECONDS:
            last_health_check = time.monotonic()
            if not service.check_datapath():
                service.stop()
                print("sluice run: the data plane was damaged under the controller (see the log above); "
                      "detached, unpinned and exiting", file=sys.stderr)
                return EXIT_FAILURE
        if event == "stop":
            service.stop()
            log.info("detached and unpinned everything")
            return 0
        if event == "reload":
            service.reload()
        elif service.switch_due():
            service.switch_schedule()
        service.release_previous_policy()


def cmd_stop(_args) -> int:
    """Stop the running controller and remove every pinned link and map, and
    whatever killed labs left behind. The pins are removed only under the
    controller lock: a running controller is asked (SIGTERM) to let go first."""
    from .lab import cleanup_stale
    from .service import lock_holder, remove_pins, take_lock
    try:
        lock = take_lock()
        holder = lock_holder() if lock is None else None
        if lock is None and holder:
            os.kill(holder, signal.SIGTERM)
        deadline = time.monotonic() + STOP_WAIT_SECONDS
        while lock is None and time.monotonic() < deadline:
            time.sleep(0.1)
            lock = take_lock()
        if lock is None:
            raise Refused(f"sluice stop: the controller (pid {holder or 'unknown'}) still holds the lock after "
                          f"{STOP_WAIT_SECONDS:.0f} s; nothing was removed", EXIT_FAILURE)
        try:
            remove_pins()
        finally:
            os.close(lock)
        cleanup_stale()
    except PermissionError as error:
        raise Refused(f"sluice stop: {error.filename or 'the controller'}: permission denied "
                      f"(run it as root)", EXIT_FAILURE) from None
    print("sluice: stopped; links and maps unpinned")
    return 0


def cmd_status(args) -> int:
    from .service import read_state
    state = read_state()
    if not state:
        print("sluice: not running (no /run/sluice/state.json)", file=sys.stderr)
        return EXIT_FAILURE
    pid = state.get("pid")
    state["controller_running"] = bool(pid and os.path.exists(f"/proc/{pid}"))
    if args.json:
        print(json.dumps(state, indent=1))
        return 0
    running = "running" if state["controller_running"] else \
        ("NOT running: " + ("the data plane detached (fail-open)" if state.get("fail_open")
                            else "the pinned data plane keeps enforcing (fail-static)"))
    print(f"controller   pid {pid}, {running}")
    print(f"policy       {state['policy']} (sha256 {state['policy_sha256']}, {state['rules']} rules, "
          f"loaded {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(state['loaded_at']))})")
    for link in state["interfaces"]:
        where = f" in netns {link['netns']}" if link["netns"] else ""
        print(f"interface    {link['ifname']}{where}: {hooks.describe(link['mode'])}"
              + (", pinned" if link["pinned"] else "") + (f" ({link['why']})" if link.get("why") else ""))
    if "flows" in state:
        print(f"flow table   {state['flows']} of {state['flow_capacity']} entries "
              f"({state['flows'] / state['flow_capacity']:.1%})")
    for rule in state.get("top_rules", []):
        print(f"top rule     {rule['rule']}: {rule['flows']} flows, {rule['packets']} packets, "
              f"{rule['dropped_packets']} dropped")
    for event in state["reloads"][-5:]:
        print(f"{event['event']:<12} {time.strftime('%H:%M:%S', time.localtime(event['time']))} "
              f"{'ok' if event['ok'] else 'FAILED'}: {event['detail']}")
    return 0


def cmd_demo(args) -> int:
    return lab_command(args, keep_running=False)


def lab_command(args, keep_running: bool) -> int:
    """demo, and run without --iface: the lab demo (controller/demo.py) once the command's needs are met."""
    from .demo import run_lab
    policy_path = args.policy or lab_policy_path()
    require_capabilities(args.command, LAB_CAPABILITIES)
    policy = load_policy_or_exit(policy_path)
    server = bind_metrics(args)
    failures = run_lab(policy, policy_path, server, args.metrics_address, args.metrics_port, args.hook,
                       keep_running)
    return EXIT_FAILURE if failures else 0


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        """One line, exit 2 (argparse's default prints the usage first)."""
        self.exit(EXIT_POLICY_ERROR, f"{self.prog}: {message} (see {self.prog} --help)\n")


def port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range (1-65535)")
    return port


def byte_size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="sluice", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-input-size", type=byte_size, metavar="SIZE",
                        help="largest policy, domains_file or prefixes_file read, e.g. 256MiB "
                             "(default: SLUICE_MAX_INPUT_BYTES, else 64MiB)")
    sub = parser.add_subparsers(dest="command", required=True)

    def add_runtime_options(p):
        p.add_argument("--hook", choices=hooks.CHOICES, default="auto", help=hooks.HOOK_HELP)
        p.add_argument("--metrics-address", default=metrics.DEFAULT_ADDRESS,
                       help="address of the Prometheus exporter; anything other than loopback "
                            "exposes it to the network (default: %(default)s)")
        p.add_argument("--metrics-port", type=port_number, default=metrics.DEFAULT_PORT,
                       help="port of the Prometheus exporter (default: %(default)s)")

    run = sub.add_parser("run", help="enforce a policy on interfaces, or in the lab if none is given",
                         description="Compile the data plane, fill its maps from the policy, attach "
                                     "it and enforce until SIGINT or SIGTERM, then detach. Without "
                                     "--iface, build the namespace lab and run there.")
    run.add_argument("--policy", help="policy file (YAML); in the lab, default: the lab policy")
    run.add_argument("--iface", action="append", default=[],
                     help="interface to attach to; repeat for each (a router needs both sides)")
    run.add_argument("--netns", help="network namespace the interfaces are in (default: this one)")
    run.add_argument("--fail-open", action="store_true",
                     help="detach when the controller dies; by default (fail-static) the pinned data "
                          "plane keeps enforcing and the next `sluice run` takes it over")
    add_runtime_options(run)
    run.set_defaults(handler=cmd_run)

    demo = sub.add_parser("demo", help="build the lab, show blocked and passing names, tear down")
    demo.add_argument("--policy", help="policy for the lab (default: the lab policy)")
    add_runtime_options(demo)
    demo.set_defaults(handler=cmd_demo)

    stop = sub.add_parser("stop", help="stop the running controller, detach, and unpin all state")
    stop.set_defaults(handler=cmd_stop)

    status = sub.add_parser("status", help="what is attached, which policy, how full, recent reloads")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=cmd_status)

    validate = sub.add_parser("validate", help="check a policy file; exit 2 with file:line:column on errors")
    validate.add_argument("policy")
    validate.set_defaults(handler=cmd_validate)

    explain = sub.add_parser(
        "explain", help="which rule a flow gets, and why (class, rollout share, schedule, precedence)",
        description="Print the decision the data plane makes for one flow, step by step: the "
                    "client's class, the most specific domain entry for the name, and each rule "
                    "considered in precedence order (exemptions, the most specific domain, the "
                    "most specific class, rule order) with why it applies or not. Nothing is "
                    "loaded into the kernel; tests hold the kernel to the same answers.")
    explain.add_argument("--policy", required=True, help="policy file (YAML)")
    explain.add_argument("--client", required=True, help="client address, IPv4 or IPv6")
    explain.add_argument("--name", help="server name (TLS SNI, HTTP Host); none: a flow without one")
    explain.add_argument("--server", help="server address, IPv4 or IPv6 (for destination sets)")
    explain.add_argument("--protocol", choices=("tls", "http", "quic", "other"), default="tls",
                         help="what the flow is read as; other: TCP or UDP sluice reads no name from, "
                              "e.g. SSH (default: %(default)s)")
    explain.add_argument("--ech", action="store_true", help="its ClientHello offers Encrypted Client Hello")
    explain.add_argument("--alpn", default="", help="the ALPN ids its ClientHello offers, comma-separated, "
                                                   "e.g. h2,http/1.1")
    explain.add_argument("--at", help="moment to judge at, ISO 8601 with offset, e.g. "
                                      "2021-03-20T10:00:00+03:00 (default: now)")
    explain.add_argument("--port", type=port_number, default=443, help="server port (default: %(default)s)")
    explain.add_argument("--no-syn", action="store_true",
                         help="the flow was already open when sluice first saw it")
    explain.set_defaults(handler=cmd_explain)

    replay = sub.add_parser("replay", help="run the data plane over a pcap/pcapng capture, one line per flow",
                            description="Run the real XDP program over every frame of a capture, in "
                                        "order, and print one line per TCP flow: client, server, "
                                        "protocol, name, rule and action. Without --policy no rule "
                                        "matches: it only names the flows.")
    replay.add_argument("capture", nargs="+",
                        help="pcap or pcapng file (Ethernet, raw IP or Linux cooked); with several, each "
                             "line begins with its capture's name (JSON: key capture), captures in the "
                             "order given")
    replay.add_argument("--jobs", type=int, default=1,
                        help="replay this many captures at once, each in a process of its own "
                             "(default: %(default)s); the output is the same")
    replay.add_argument("--policy", help="policy file to judge the flows by")
    replay.add_argument("--fix-checksums", action="store_true",
                        help="make every IPv4 header, TCP and UDP checksum right before replaying: for "
                             "captures whose addresses were rewritten (anonymised) without fixing them, "
                             "whose segments would all be taken for decoys. It hides a capture's real "
                             "bad-checksum decoys too: do not measure evasion with it")
    replay.add_argument("--json", action="store_true",
                        help='one JSON object per line with keys client, client_port, server, '
                             'server_port, proto, name, rule, action')
    replay.set_defaults(handler=cmd_replay)
    return parser


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="ts=%(asctime)s level=%(levelname)s logger=%(name)s msg=%(message)r")
    args = build_parser().parse_args(argv)
    if args.max_input_size:
        input_files.MAX_INPUT_BYTES = args.max_input_size
    try:
        return args.handler(args)
    except Refused as refused:
        print(refused, file=sys.stderr)
        return refused.status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`sluice replay x.pcap | head`): stop quietly, as
        # cat does, and keep Python from complaining again when it flushes stdout.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
    except Exception as error:
        # The last resort: every expected failure has its own line above.
        print(f"sluice {args.command}: unexpected error: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
