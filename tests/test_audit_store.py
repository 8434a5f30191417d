"""The audit store under attack: every way of rewriting, truncating or swapping a log (the tamper
suite), concurrent writers, killed writers, and a monitor that stays consistent when a write
fails. Each tamper case runs through ``lipguard audit verify`` as a user would."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter

import numpy as np
import pytest
import sqlalchemy
from typer.testing import CliRunner

from lipguard.cli import app
from lipguard.errors import InvalidArgumentError
from lipguard.monitor import AuditError, AuditStore, Checkpoint, LipschitzMonitor
from lipguard.monitor.store import encode

runner = CliRunner()
KEY = "correct horse battery staple"


def _sql(path, statement, *parameters):
    connection = sqlite3.connect(path)
    connection.execute(statement, parameters)
    connection.commit()
    connection.close()


def _filled(path, key=None, records=20):
    store = AuditStore(path, key=key)
    store.append(("violation", {"i": i, "ratio": 1.0 + i}) for i in range(records))
    store.engine.dispose()  # closed, as a finished writer's would be: the WAL is folded back
    return store


def _verify(path, *options, key=None):
    arguments = ["audit", "verify", str(path), *map(str, options)]
    if key is not None:
        arguments += ["--key", key]
    return runner.invoke(app, arguments)


def _checkpoint(store, path):
    store.checkpoint().save(path)
    return path


# --- what a checkpoint catches (every row of the finding) ------------------------------------


@pytest.mark.parametrize("key", [None, KEY])
def test_tail_truncation_is_caught_by_a_checkpoint_and_only_by_it(tmp_path, key):
    path = tmp_path / "audit.db"
    anchor = _checkpoint(_filled(path, key), tmp_path / "cp.json")
    _sql(path, "DELETE FROM audit_records WHERE seq > 15")
    unanchored = _verify(path, key=key)
    assert unanchored.exit_code == 0  # the documented limit: nothing in the log shows it
    assert "no checkpoint" in unanchored.output
    result = _verify(path, "--checkpoint", anchor, key=key)
    assert result.exit_code == 1
    assert "record 21 is missing" in result.output


def test_truncate_then_append_is_caught_by_a_checkpoint(tmp_path):
    path = tmp_path / "audit.db"
    store = _filled(path)
    anchor = _checkpoint(store, tmp_path / "cp.json")
    _sql(path, "DELETE FROM audit_records WHERE seq > 10")
    store.append([("violation", {"i": 99})] * 15)  # the writer goes on, the log is longer again
    assert _verify(path).exit_code == 0
    result = _verify(path, "--checkpoint", anchor)
    assert result.exit_code == 1
    assert "differs from the checkpoint" in result.output


def test_a_whole_chain_rewritten_with_recomputed_hashes(tmp_path):
    """Unkeyed: the attacker rebuilds a consistent log; only the checkpoint exposes it. Keyed:
    the attacker cannot compute the MACs, so verification with the key fails without one."""
    path = tmp_path / "audit.db"
    anchor = _checkpoint(_filled(path), tmp_path / "cp.json")
    header = AuditStore(path, create=False).records()[0].payload
    path.unlink()
    forged = AuditStore(path)  # a new log, then the old header's identity copied in
    forged.append(("violation", {"i": i, "ratio": 0.0}) for i in range(20))
    _rechain(path, header)
    assert _verify(path).exit_code == 0
    result = _verify(path, "--checkpoint", anchor)
    assert result.exit_code == 1
    assert "differs from the checkpoint" in result.output

    keyed = tmp_path / "keyed.db"
    _filled(keyed, KEY)
    keyed_header = AuditStore(keyed, key=KEY, create=False).records()[0].payload
    _sql(keyed, "UPDATE audit_records SET payload = ? WHERE seq = 5", '{"i":3,"ratio":0.0}')
    _rechain(keyed, keyed_header)  # recomputed with SHA-256: the key is unknown to the attacker
    result = _verify(keyed, key=KEY)
    assert result.exit_code == 1
    assert "hash mismatch" in result.output


def _rechain(path, header):
    """Recompute every hash of a log with plain SHA-256 after putting ``header`` in record 1."""
    import hashlib

    connection = sqlite3.connect(path)
    rows = connection.execute(
        "SELECT seq, created, kind, payload FROM audit_records ORDER BY seq"
    ).fetchall()
    prev = "0" * 64
    for seq, created, kind, payload in rows:
        if seq == 1:
            payload = json.dumps(header, sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(encode(prev, seq, created, kind, payload)).hexdigest()
        connection.execute(
            "UPDATE audit_records SET payload = ?, prev_hash = ?, hash = ? WHERE seq = ?",
            (payload, prev, digest, seq),
        )
        prev = digest
    connection.commit()
    connection.close()


def test_another_log_swapped_in(tmp_path):
    path = tmp_path / "audit.db"
    anchor = _checkpoint(_filled(path), tmp_path / "cp.json")
    other = tmp_path / "other.db"
    _filled(other, records=40)
    shutil.copy(other, path)
    result = _verify(path, "--checkpoint", anchor)
    assert result.exit_code == 1
    assert "another log swapped in" in result.output


def test_a_database_copied_without_its_write_ahead_log(tmp_path):
    path = tmp_path / "audit.db"
    store = _filled(path)
    store.append(("violation", {"late": i}) for i in range(20))  # a live writer: in the -wal
    anchor = _checkpoint(store, tmp_path / "cp.json")
    assert (tmp_path / "audit.db-wal").stat().st_size > 0
    copy = tmp_path / "copy.db"
    shutil.copy(path, copy)
    result = _verify(copy, "--checkpoint", anchor)
    assert result.exit_code == 1
    assert "record 41 is missing" in result.output


def test_expect_head_is_a_checkpoint_without_a_file(tmp_path):
    path = tmp_path / "audit.db"
    store = _filled(path)
    seq, digest = store.head()
    store.append([("violation", {"later": True})])
    assert _verify(path, "--expect-head", f"{seq}:{digest}").exit_code == 0  # grown: fine
    _sql(path, "DELETE FROM audit_records WHERE seq >= ?", seq)
    assert _verify(path, "--expect-head", f"{seq}:{digest}").exit_code == 1


def test_a_keyed_checkpoint_cannot_be_forged_or_moved(tmp_path):
    path = tmp_path / "audit.db"
    store = _filled(path, KEY)
    point = store.checkpoint().to_dict()
    forged = {**point, "count": 5}
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    result = _verify(path, "--checkpoint", tmp_path / "forged.json", key=KEY)
    assert result.exit_code == 1
    assert "signature" in result.output


# --- what is caught without a checkpoint -----------------------------------------------------


@pytest.mark.parametrize("key", [None, KEY])
def test_edits_deletions_and_reorderings(tmp_path, key):
    cases = {
        "edit": ['UPDATE audit_records SET payload = \'{"i":7,"ratio":0.5}\' WHERE seq = 8'],
        "delete": ["DELETE FROM audit_records WHERE seq = 5"],
        "reorder": [
            "UPDATE audit_records SET seq = -3 WHERE seq = 3",
            "UPDATE audit_records SET seq = 3 WHERE seq = 4",
            "UPDATE audit_records SET seq = 4 WHERE seq = -3",
        ],
        "header": ["DELETE FROM audit_records WHERE seq = 1"],
        "kind": ["UPDATE audit_records SET kind = 'note' WHERE seq = 9"],
    }
    for name, statements in cases.items():
        path = tmp_path / f"{name}-{key is not None}.db"
        _filled(path, key)
        for statement in statements:
            _sql(path, statement)
        result = _verify(path, key=key)
        assert result.exit_code == 1, (name, result.output)
        assert "tampered" in result.output


def test_the_encoding_is_unambiguous(tmp_path):
    """Moving characters between the kind and the payload keeps their concatenation but not
    the length-prefixed encoding: caught, and `audit report` still does not crash."""
    path = tmp_path / "audit.db"
    store = AuditStore(path, key=KEY)
    store.append([("violation", {"i": 1})])
    _sql(
        path,
        "UPDATE audit_records SET kind = 'violation|{\"i\"', payload = ':1}' WHERE seq = 2",
    )
    assert encode("p", 2, "t", "violation", '{"i":1}') != encode(
        "p", 2, "t", 'violation|{"i"', ":1}"
    )
    assert _verify(path, key=KEY).exit_code == 1
    report = runner.invoke(app, ["audit", "report", str(path), "--key", KEY])
    assert report.exit_code == 1
    assert "Traceback" not in report.output


@pytest.mark.parametrize("damage", ["drop", "rename", "zero-bytes", "missing", "not-sqlite"])
def test_a_missing_file_or_table_fails_closed_and_creates_nothing(tmp_path, damage):
    path = tmp_path / "audit.db"
    _filled(path)
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"audit.db{suffix}").unlink(missing_ok=True)
    if damage == "drop":
        _sql(path, "DROP TABLE audit_records")
    elif damage == "rename":
        _sql(path, "ALTER TABLE audit_records RENAME TO old_records")
    elif damage == "zero-bytes":
        path.write_bytes(b"")
    elif damage == "missing":
        path.unlink()
    else:
        path.write_text("these are not the records you are looking for")
    before = _files(tmp_path)
    result = _verify(path)
    assert result.exit_code != 0, result.output
    assert "intact" not in result.output
    assert "Traceback" not in result.output
    assert _files(tmp_path) == before  # nothing created or changed


def _files(folder):
    """Every file's bytes, except SQLite's shared-memory index and an empty write-ahead log
    (what any SQLite reader of a WAL database leaves)."""
    files = {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.endswith("-shm")}
    return {name: data for name, data in files.items() if data or not name.endswith("-wal")}


def test_keys_are_recorded_and_enforced(tmp_path):
    path = tmp_path / "keyed.db"
    _filled(path, KEY)
    assert _verify(path, key=KEY).exit_code == 0
    for key, message in ((None, "is keyed"), ("wrong", "not this audit log's key")):
        result = _verify(path, key=key)
        assert result.exit_code == 2
        assert message in result.output
    with pytest.raises(AuditError, match="is keyed"):
        AuditStore(path).append([("violation", {})])  # an unkeyed writer is refused
    with pytest.raises(AuditError, match="not keyed"):
        AuditStore(_filled(tmp_path / "plain.db").url.removeprefix("sqlite:///"), key=KEY)
    with pytest.raises(InvalidArgumentError, match="empty"):
        AuditStore(tmp_path / "x.db", key="")
    assert not (tmp_path / "x.db").exists()


def test_the_monitor_command_takes_the_key(tmp_path, monkeypatch):
    path = tmp_path / "keyed.db"
    _filled(path, KEY)
    log = tmp_path / "log.npz"
    rng = np.random.default_rng(0)
    np.savez(log, states=rng.normal(size=(50, 2)), rewards=rng.normal(size=50))
    unkeyed = runner.invoke(app, ["monitor", str(log), "--lipschitz", "1", "--db", str(path)])
    assert unkeyed.exit_code == 2
    assert "is keyed" in unkeyed.output
    monkeypatch.setenv("LIPGUARD_AUDIT_KEY", KEY)
    keyed = runner.invoke(app, ["monitor", str(log), "--lipschitz", "1", "--db", str(path)])
    assert keyed.exit_code == 0, keyed.output
    assert _verify(path).exit_code == 0


def test_the_checkpoint_command(tmp_path):
    path = tmp_path / "audit.db"
    _filled(path, KEY)
    out = tmp_path / "cp.json"
    made = runner.invoke(app, ["audit", "checkpoint", str(path), "--out", str(out), "--key", KEY])
    assert made.exit_code == 0, made.output
    point = Checkpoint.load(out)
    assert point.count == 21
    assert point.keyed
    assert point.mac
    again = runner.invoke(app, ["audit", "checkpoint", str(path), "--out", str(out), "--key", KEY])
    assert again.exit_code == 2  # an existing checkpoint is never replaced silently
    assert "--overwrite" in again.output
    assert Checkpoint.load(out) == point


# --- the operation is recorded, not only alarms ----------------------------------------------


def test_a_compliant_stream_leaves_a_record_of_every_batch(tmp_path):
    path = tmp_path / "audit.db"
    monitor = LipschitzMonitor(10.0, store=AuditStore(path), drift=False)
    rng = np.random.default_rng(0)
    for _ in range(3):
        states = rng.normal(size=(64, 4))
        assert not monitor.observe(states, states[:, 0]).events
    kinds = Counter(record.kind for record in AuditStore(path, create=False).records())
    assert kinds == {"log_created": 1, "monitor_started": 1, "batch": 3}
    batch = AuditStore(path, create=False).records("batch")[1].payload
    assert (batch["step"], batch["count"], len(batch["sha256"])) == (64, 64, 64)


def test_observe_is_transactional_when_the_store_fails(tmp_path):
    path = tmp_path / "audit.db"
    store = AuditStore(path)
    monitor = LipschitzMonitor(1.0, store=store, window=100)
    rng = np.random.default_rng(0)
    states = rng.normal(size=(40, 3))
    rewards = states[:, 0] * 3.0  # violates L = 1
    monitor.observe(states[:20], rewards[:20])
    before = (monitor.step, monitor._window.states.copy(), store.count())
    broken = store.append
    store.append = lambda records: (_ for _ in ()).throw(AuditError("disk full"))
    with pytest.raises(AuditError):
        monitor.observe(states[20:], rewards[20:])
    assert monitor.step == before[0]
    np.testing.assert_array_equal(monitor._window.states, before[1])
    assert store.count() == before[2]
    store.append = broken
    retried = monitor.observe(states[20:], rewards[20:])
    assert retried.violations
    assert min(e.step for e in retried.events) >= 20
    assert AuditStore(path, create=False).verify().ok


# --- concurrency and crashes -----------------------------------------------------------------

WRITER = textwrap.dedent("""
    import sys
    from lipguard.monitor import AuditStore
    store = AuditStore(sys.argv[1])
    name, batches, size = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    for b in range(batches):
        store.append(("event", {"writer": name, "i": b * size + i}) for i in range(size))
""")


def _concurrent_writers(target, writers=4, batches=100, size=50):
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(target), str(w), str(batches), str(size)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(writers)
    ]
    for process in processes:
        _, error = process.communicate(timeout=300)
        assert process.returncode == 0, error
    store = AuditStore(target, create=False)
    report = store.verify()
    assert report.ok, report.problems[:3]
    seen = Counter((r.payload["writer"], r.payload["i"]) for r in store.records("event"))
    assert len(seen) == writers * batches * size
    assert set(seen.values()) == {1}


def test_four_concurrent_writers_on_sqlite(tmp_path):
    _concurrent_writers(tmp_path / "audit.db")  # 4 × 5,000 events, batches of 50


def test_concurrent_single_record_writers_on_sqlite(tmp_path):
    _concurrent_writers(tmp_path / "audit.db", writers=3, batches=150, size=1)


def test_a_fresh_log_being_created_by_another_writer_is_joined_not_refused(tmp_path):
    # The state a concurrent creator leaves between switching to WAL mode and its first
    # commit: a non-empty SQLite file with no schema yet (CI saw a writer refuse it).
    path = tmp_path / "audit.db"
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA journal_mode=WAL")
    assert path.stat().st_size > 0
    store = AuditStore(path)
    store.append([("event", {"i": 1})])
    connection.close()
    assert AuditStore(path, create=False).verify().ok


@pytest.mark.parametrize("vacuum", [False, True])
def test_a_writer_refuses_a_log_whose_table_was_dropped(tmp_path, vacuum):
    path = tmp_path / "audit.db"
    _filled(path)
    _sql(path, "DROP TABLE audit_records")
    if vacuum:
        _sql(path, "VACUUM")
    with pytest.raises(AuditError, match="not an audit log"):
        AuditStore(path)
    assert not sqlite3.connect(path).execute("SELECT name FROM sqlite_master").fetchall()


def test_writers_starting_together_on_a_new_file_share_one_chain(tmp_path):
    _concurrent_writers(tmp_path / "audit.db", writers=4, batches=1, size=1)


@pytest.fixture
def postgres_url():
    """A fresh database on CI's PostgreSQL server (skipped without one)."""
    url = os.environ.get("LIPGUARD_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("no PostgreSQL server here: set LIPGUARD_TEST_POSTGRES_URL to run this test")
    name = f"lipguard_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    yield url.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f"DROP DATABASE {name} WITH (FORCE)"))
    admin.dispose()


def test_four_writers_of_ten_thousand_events_on_postgresql(postgres_url):
    """Many monitors, one chain: 4 processes × 10,000 events (batches of 100) into one store."""
    _concurrent_writers(postgres_url, writers=4, batches=100, size=100)


def test_kill_minus_nine_of_concurrent_postgresql_writers_loses_no_committed_record(postgres_url):
    """Four writers append to one PostgreSQL chain; two are killed with SIGKILL mid-stream, the
    others after them. The chain verifies and holds every record a writer saw committed."""
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", KILLED_WRITER, postgres_url], stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    committed = [0] * len(writers)

    def read_until(deadline: float, alive: list[int]) -> None:
        while time.monotonic() < deadline:
            for index in alive:
                line = writers[index].stdout.readline()
                if line:
                    committed[index] = max(committed[index], int(line))

    read_until(time.monotonic() + 3.0, [0, 1, 2, 3])
    for index in (0, 1):
        os.kill(writers[index].pid, signal.SIGKILL)
        writers[index].wait()
    read_until(time.monotonic() + 1.5, [2, 3])
    for index in (2, 3):
        os.kill(writers[index].pid, signal.SIGKILL)
        writers[index].wait()
    report = AuditStore(postgres_url).verify()
    assert report.ok, report.problems[:3]
    assert min(committed) > 0
    assert report.records >= max(committed)


def test_postgresql_detects_edits_and_keys(postgres_url):
    store = AuditStore(postgres_url, key="k")
    store.append([("violation", {"i": i}) for i in range(100)])
    assert store.count() == 101
    assert store.verify(checkpoint=store.checkpoint()).ok
    with pytest.raises(AuditError, match="is keyed"):
        AuditStore(postgres_url)
    engine = sqlalchemy.create_engine(postgres_url)
    with engine.begin() as connection:
        connection.execute(
            sqlalchemy.text("UPDATE audit_records SET payload = :p WHERE seq = :s"),
            {"p": '{"i": -1}', "s": 50},
        )
    engine.dispose()
    assert not store.verify().ok


KILLED_WRITER = textwrap.dedent("""
    import sys
    from lipguard.monitor import AuditStore
    store = AuditStore(sys.argv[1])
    batch = 0
    while True:
        last = store.append(("violation", {"batch": batch, "i": i}) for i in range(200))
        print(last, flush=True)
        batch += 1
""")


def test_kill_minus_nine_loses_no_committed_record(tmp_path):
    rng = random.Random(0)
    for trial in range(3):
        path = tmp_path / f"killed{trial}.db"
        writer = subprocess.Popen(
            [sys.executable, "-c", KILLED_WRITER, str(path)], stdout=subprocess.PIPE, text=True
        )
        committed = 0
        deadline = time.monotonic() + 1.0 + rng.random()
        while time.monotonic() < deadline:
            line = writer.stdout.readline()
            if line:
                committed = int(line)
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        report = AuditStore(path).verify()
        assert report.ok, report.problems
        assert committed > 0
        assert report.records >= committed
