# SPDX-License-Identifier: GPL-2.0-only
"""When a rule acts: its active windows and its escalation steps."""

from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from .. import schedule
from .actions import ACTION_DETAIL_KEYS, ActionReader
from .model import ACTIONS, Step

STEP_KEYS = ("at", "action") + ACTION_DETAIL_KEYS
WINDOW_KEYS = ("from", "until", "daily", "timezone")


class ScheduleReader(ActionReader):
    """The loader's reading of active and escalate; a step's details are read as a rule's (ActionReader)."""

    def windows(self, node) -> tuple:
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            self.problem(node, "active must be a list of windows, e.g. [{from: 2021-03-10T10:00:00+03:00}]")
            return ()
        windows = []
        for item in node.value:
            keys = self.mapping(item, "an active window", WINDOW_KEYS)
            if "daily" in keys:
                if "from" in keys or "until" in keys:
                    self.problem(item, "a window is either daily hours or from/until, not both")
                    continue
                try:
                    start, end = schedule.parse_daily(self.scalar(keys["daily"][1], "daily") or "")
                except ValueError as error:
                    self.problem(keys["daily"][1], str(error))
                    continue
                zone = self.scalar(keys["timezone"][1], "timezone") if "timezone" in keys else "UTC"
                try:
                    ZoneInfo(zone)
                except (ZoneInfoNotFoundError, ValueError):
                    self.problem(keys["timezone"][1], f"unknown time zone {zone!r} (e.g. Europe/Moscow, UTC)")
                    continue
                windows.append(schedule.Daily(start, end, zone))
            elif "from" in keys or "until" in keys:
                if "timezone" in keys:
                    self.problem(keys["timezone"][0], "timezone applies to daily windows; timestamps carry "
                                                      "their own offset")
                ends = [self.timestamp(keys[k][1], k) if k in keys else None for k in ("from", "until")]
                if all(ends) and ends[0] >= ends[1]:
                    self.problem(item, "the window ends before it starts")
                windows.append(schedule.Span(*ends))
            else:
                self.problem(item, "a window needs from and/or until, or daily")
        return tuple(windows)

    def timestamp(self, node, what: str) -> datetime | None:
        try:
            return schedule.parse_timestamp(self.scalar(node, what) or "")
        except ValueError as error:
            self.problem(node, f"{what}: {error}")
            return None

    def steps(self, node) -> tuple[Step, ...]:
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            self.problem(node, "escalate must be a list of steps, e.g. [{at: 2021-04-01T00:00:00Z, action: block}]")
            return ()
        steps = []
        for item in node.value:
            keys = self.mapping(item, "an escalation step", STEP_KEYS)
            if "at" not in keys or "action" not in keys:
                self.problem(item, "an escalation step needs at (a timestamp) and action")
                continue
            at = self.timestamp(keys["at"][1], "at")
            action = self.scalar(keys["action"][1], "action")
            if action not in ACTIONS:
                self.problem(keys["action"][1], f"unknown action {action!r}; one of: {', '.join(ACTIONS)}")
                continue
            if at and steps and at <= steps[-1].at:
                self.problem(keys["at"][1], "escalation steps must be in time order")
            steps.append(Step(at, action, self.action_details(item, keys, action), item.start_mark.line + 1))
        return tuple(steps)
