"""lipguard monitor and lipguard audit."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
from typer.testing import CliRunner

from lipguard.cli import app

runner = CliRunner()


def _log(tmp_path):
    rng = np.random.default_rng(0)
    states = rng.normal(size=(600, 3))
    rewards = states @ np.array([0.5, 0.5, 0.0])
    rewards[300] += 10.0  # a planted fault
    np.savez(tmp_path / "log.npz", states=states, rewards=rewards)
    np.savetxt(tmp_path / "log.csv", np.column_stack([states, rewards]), delimiter=",")
    return tmp_path / "log.npz", tmp_path / "log.csv"


def test_monitor_replays_a_log_into_an_audit_store(tmp_path):
    npz, csv = _log(tmp_path)
    db, out = tmp_path / "audit.db", tmp_path / "events.json"
    result = runner.invoke(
        app, ["monitor", str(npz), "--lipschitz", "1.0", "--db", str(db), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "violation" in result.output
    events = json.loads(out.read_text())
    assert all(
        300 in (e["step"], e["details"]["other"]) for e in events if e["kind"] == "violation"
    )
    same = runner.invoke(app, ["monitor", str(csv), "--lipschitz", "1.0"])
    assert same.exit_code == 0, same.output

    verified = runner.invoke(app, ["audit", "verify", str(db)])
    assert verified.exit_code == 0, verified.output
    assert "intact" in verified.output
    report = runner.invoke(app, ["audit", "report", str(db), "--plot", str(tmp_path / "t.png")])
    assert report.exit_code == 0, report.output
    assert (tmp_path / "t.png").stat().st_size > 1000

    connection = sqlite3.connect(db)
    connection.execute("UPDATE audit_records SET payload = '{}' WHERE seq = 1")
    connection.commit()
    connection.close()
    tampered = runner.invoke(app, ["audit", "verify", str(db)])
    assert tampered.exit_code == 1
    assert "tampered" in tampered.output


def test_monitor_rejects_an_unknown_log(tmp_path):
    (tmp_path / "log.txt").write_text("1,2")
    result = runner.invoke(app, ["monitor", str(tmp_path / "log.txt"), "--lipschitz", "1"])
    assert result.exit_code == 2
    assert ".npz, .csv or .parquet" in result.output
