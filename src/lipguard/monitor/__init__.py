"""Runtime monitoring: Lipschitz violations, drift alarms, a tamper-evident audit log
(SPEC G1–G5). See ``docs/monitor.md``."""

from lipguard._deprecation import module_getattr
from lipguard.errors import AuditError
from lipguard.monitor.drift import ADWIN, PageHinkley
from lipguard.monitor.monitor import (
    EVENT_KINDS,
    Event,
    EventKind,
    LipschitzMonitor,
    Observation,
)
from lipguard.monitor.pairs import PairViolations, brute_force_violations, find_violations
from lipguard.monitor.store import AuditRecord, AuditStore, AuditVerification, Checkpoint

__all__ = [
    "ADWIN",
    "EVENT_KINDS",
    "AuditError",
    "AuditRecord",
    "AuditStore",
    "AuditVerification",
    "Checkpoint",
    "Event",
    "EventKind",
    "LipschitzMonitor",
    "Observation",
    "PageHinkley",
    "PairViolations",
    "brute_force_violations",
    "find_violations",
]

__getattr__ = module_getattr(
    __name__, {"VerifyReport": ("lipguard.monitor.AuditVerification", AuditVerification)}
)
