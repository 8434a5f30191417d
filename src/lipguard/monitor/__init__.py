"""Runtime monitoring: Lipschitz violations, drift alarms, a tamper-evident audit log
(SPEC G1–G5). See ``docs/monitor.md``."""

from lipguard.errors import AuditError
from lipguard.monitor.drift import ADWIN, PageHinkley
from lipguard.monitor.monitor import Event, LipschitzMonitor, Observation
from lipguard.monitor.pairs import PairViolations, brute_force_violations, find_violations
from lipguard.monitor.store import AuditRecord, AuditStore, Checkpoint, VerifyReport

__all__ = [
    "ADWIN",
    "AuditError",
    "AuditRecord",
    "AuditStore",
    "Checkpoint",
    "Event",
    "LipschitzMonitor",
    "Observation",
    "PageHinkley",
    "PairViolations",
    "VerifyReport",
    "brute_force_violations",
    "find_violations",
]
