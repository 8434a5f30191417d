"""Thread counts for the bound engine: adaptive to busy cores, overridable, always restored."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from lipguard import _threads
from lipguard.errors import InvalidArgumentError


def test_a_fixed_count_and_a_bad_one(monkeypatch):
    monkeypatch.setenv(_threads.VARIABLE, "1")
    assert _threads.work_threads() == 1
    monkeypatch.setenv(_threads.VARIABLE, "many")
    with pytest.raises(InvalidArgumentError, match=_threads.VARIABLE):
        _threads.work_threads()


def test_the_callers_count_is_restored_and_nesting_measures_once(monkeypatch):
    monkeypatch.setenv(_threads.VARIABLE, "1")
    previous = torch.get_num_threads()
    with _threads.adapted_threads() as outer:
        assert torch.get_num_threads() == outer == 1
        monkeypatch.setenv(_threads.VARIABLE, "many")  # would raise if measured again
        with _threads.adapted_threads() as inner:
            assert inner == 1
    assert torch.get_num_threads() == previous


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores to keep one busy")
def test_a_busy_core_is_left_alone(monkeypatch):
    monkeypatch.delenv(_threads.VARIABLE, raising=False)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        counts = [_threads.work_threads() for _ in range(5)]
    finally:
        busy.kill()
        busy.wait()
    assert min(counts) <= max(1, (os.cpu_count() or 1) - 1)
    assert min(counts) >= 1
