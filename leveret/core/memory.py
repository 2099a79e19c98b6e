"""Resource alarms: the memory monitor (messages held, the process's RSS) and the disk alarm it also carries.
While an alarm is on, publishers are blocked (the protocol adapters listen to :class:`MemoryMonitor`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

log = logging.getLogger("leveret.broker")


def process_rss() -> int:
    """This process's resident set size in bytes (/proc/self/statm, as RabbitMQ reads it); 0 where unknown."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return 0


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class MemoryMonitor:
    """Resource alarms, as RabbitMQ's: memory (alarm above ``high``) and free disk space (alarm set by whoever
    measures it). While either is on, publishers are blocked.

    ``used`` is what the messages held in memory cost: their bodies plus RECORD_COST per record, counted as
    they come and go (so a flood of empty messages counts too). ``rss`` is the process's resident memory,
    sampled by the server (:meth:`sample`, every 100 ms) and whenever ``used`` grew by ``high`` / 64 since the
    last sample (a busy event loop may run its timers late; publishes call :meth:`check` past ``check_at``). The
    alarm is on when ``used`` is over ``high``, or when ``rss`` is over ``high`` while messages account for at
    least half of the limit (``used`` > ``high`` / 2): memory that messages do not hold (heap fragmentation
    after a drain, code) cannot be freed by blocking publishers, so it alone does not keep them blocked."""

    def __init__(self, high: int) -> None:
        self.used = 0
        self.rss = 0
        self.track_rss = True  # False when the process is not the broker's alone (embedded): ``used`` only
        self.high = high if high > 0 else 2**62
        self.step = max(self.high // 64, 256 * 1024)
        self.next_sample = self.step  # sample the RSS again when ``used`` passes this
        self.check_at = min(self.high, self.next_sample)  # publishes call check() when ``used`` passes this
        self.alarm = False
        self.memory_alarm = False
        self.disk_alarm = False
        self.listeners: list[Callable[[bool], None]] = []

    @property
    def reason(self) -> str:
        return "low on memory" if self.memory_alarm else "low on disk"

    def sample(self) -> None:
        """Read the process's RSS and raise or clear the alarm."""
        self.rss = process_rss()
        self.next_sample = self.used + self.step
        self.check()

    def check(self) -> None:
        """Raise or clear the memory alarm after ``used`` (or ``rss``) changed (called on the slow path only)."""
        high = self.high
        used = self.used
        if used > self.next_sample and self.track_rss:
            self.rss = process_rss()
            self.next_sample = used + self.step
        self.check_at = min(high, self.next_sample) if self.track_rss else high
        memory_alarm = used > high or (self.rss > high and used > high // 2)
        if memory_alarm != self.memory_alarm:
            self.memory_alarm = memory_alarm
            log.warning("memory alarm %s: %d bytes of messages held, process RSS %d bytes, limit %d",
                        "set" if memory_alarm else "cleared", used, self.rss, high)
            self._update()

    def set_disk_alarm(self, on: bool, free: int, limit: int) -> None:
        if on != self.disk_alarm:
            self.disk_alarm = on
            log.warning("disk alarm %s: %d bytes free, limit %d", "set" if on else "cleared", free, limit)
            self._update()

    def _update(self) -> None:
        alarm = self.memory_alarm or self.disk_alarm
        if alarm != self.alarm:
            self.alarm = alarm
            for listener in list(self.listeners):
                listener(alarm)
