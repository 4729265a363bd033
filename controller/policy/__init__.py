# SPDX-License-Identifier: GPL-2.0-only
"""Policy files: YAML in, checked rules out, every problem with file:line:column.

The loader walks yaml's node graph rather than plain Python objects, because
only nodes remember where they came from. It collects every problem it finds
before giving up, so that one run of `sluice validate` shows them all.
Domain lists can be long (a malware feed of a million names), so
`domains_file` is read with plain line splitting, not YAML.

The format is documented in docs/policy.md and published as JSON Schema in
controller/policy.schema.json; tests/test_policy.py keeps the two in step.

The package, one module per concern (each imports only those above it):
  model.py        what a checked policy is: Policy, Rule, Step, RateLimit, the errors,
                  the actions and the limits every value is held to
  units.py        rates, sizes, durations and domain names, from text
  input_files.py  reading an input file whole, bounded, as text
  nodes.py        yaml nodes to values, each problem where it is
  who.py          client classes, percent (rollout), ports, opened_by_client, quic
  what.py         protocol, the ClientHello's ECH and ALPN, destination sets; triggers (after)
  when.py         active windows and escalation steps
  actions.py      the details of throttle, shape, delay and block
  loader.py       the file and its rules: load_policy
  summary.py      what a valid policy does, for `sluice validate`
"""

from .input_files import InputFileError, read_text_file
from .loader import load_policy
from .model import (ACTIONS, BLOCK_METHODS, DEFAULT_FLOW_IDLE_NS, DEFAULT_WINDOW_BYTES, DEFAULT_WINDOW_PACKETS,
                    SCOPES, Policy, PolicyError, Problem, RateLimit, Rule, Step, with_stable_ids)
from .summary import policy_summary
from .units import check_domain, parse_duration, parse_rate, parse_size

__all__ = ["ACTIONS", "BLOCK_METHODS", "DEFAULT_FLOW_IDLE_NS", "DEFAULT_WINDOW_BYTES", "DEFAULT_WINDOW_PACKETS",
           "SCOPES", "InputFileError", "Policy", "PolicyError", "Problem", "RateLimit", "Rule", "Step",
           "check_domain", "load_policy", "parse_duration", "parse_rate", "parse_size", "policy_summary",
           "read_text_file", "with_stable_ids"]
