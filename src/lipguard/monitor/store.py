"""A tamper-evident, append-only audit log on SQLAlchemy (SQLite by default, PostgreSQL by URL).

Every record carries a sequence number, a UTC timestamp, a kind, a JSON payload and the hash
of its predecessor; its own hash is

    h_i = MAC("lipguard-audit/2" ‖ [prev_hash] ‖ [seq] ‖ [time] ‖ [kind] ‖ [canonical JSON payload])

where ``[x]`` is ``x``'s UTF-8 bytes prefixed by their length (8 bytes, big-endian), so no
two different records share an encoding, and ``MAC`` is SHA-256, or HMAC-SHA-256 when the log
is keyed. Record 1 is the log's **header** (kind ``log_created``): a random log id, the format,
and whether the log is keyed (with a key fingerprint) — covered by the chain like every record.

What :meth:`AuditStore.verify` detects (``docs/monitor.md`` has the full table):

- always: an edited, inserted, deleted-in-the-middle or reordered record, a missing header,
  a missing file or table, a keyed log verified without its key (or with another key);
- with a key: a forged record or a rewritten chain (the attacker cannot compute the MACs);
- with a :class:`Checkpoint` (``(log id, count, head)`` kept elsewhere, signed with the key
  when there is one): truncation of the tail (also truncate-then-append), a chain rewritten
  without a key, another log swapped in, a database copied without its write-ahead log.

Without a checkpoint nothing can tell a log whose last records were deleted from one that was
never longer: keep checkpoints outside the machine that writes the log (as transparency logs
publish their signed tree heads).

Appends are serialised across processes (SQLite: ``BEGIN IMMEDIATE`` with a busy timeout;
PostgreSQL: a transaction-scoped advisory lock) and retried a few times before an
:class:`AuditError`; a batch is one transaction. SQLite runs in WAL mode with
``synchronous=FULL``: a transaction that has returned is on disk, so killing the writer (even
with ``kill -9``) loses nothing that was committed.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import os
import sqlite3
import struct
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.pool import ConnectionPoolEntry

from lipguard.errors import AuditError, InvalidArgumentError
from lipguard.results import Check, Report

FORMAT = "lipguard-audit/2"
GENESIS = "0" * 64
KEY_VARIABLE = "LIPGUARD_AUDIT_KEY"
HEADER_KIND = "log_created"
TABLE = "audit_records"
ATTEMPTS = 8  # appends retried this many times on lock contention before failing
BUSY_TIMEOUT_S = 30.0

T = TypeVar("T")
#: a record's payload: a JSON object
Payload = Mapping[str, object]
#: a stored row: ``(seq, created, kind, canonical payload, prev_hash, hash)``
_Row = tuple[int, str, str, str, str, str]


def _table(metadata: MetaData) -> Table:
    return Table(
        TABLE,
        metadata,
        Column("seq", Integer, primary_key=True, autoincrement=False),
        Column("created", String(40), nullable=False),
        Column("kind", String(64), nullable=False),
        Column("payload", Text, nullable=False),
        Column("prev_hash", String(64), nullable=False),
        Column("hash", String(64), nullable=False),
    )


def canonical(payload: Payload) -> str:
    """The payload's canonical JSON (sorted keys, no spaces; ``Infinity`` as Python writes it)."""
    try:
        return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=float)
    except (TypeError, ValueError) as error:
        raise InvalidArgumentError(f"an audit payload must be JSON: {error}") from None


def encode(prev: str, seq: int, created: str, kind: str, payload: str) -> bytes:
    """The hashed bytes of one record: the format tag, then every field length-prefixed."""
    parts = [FORMAT.encode()]
    for value in (prev, str(seq), created, kind, payload):
        data = value.encode()
        parts.append(struct.pack(">Q", len(data)) + data)
    return b"".join(parts)


@dataclass(frozen=True)
class AuditRecord:
    """One record of the audit chain: its sequence number, creation time, kind, JSON payload,
    the previous record's hash and its own (over all of these, :data:`FORMAT`'s encoding)."""

    seq: int
    created: str
    kind: str
    payload: dict[str, Any]
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class AuditVerification(Report):
    """The outcome of :meth:`AuditStore.verify`: ``ok`` when the chain (and the checkpoint, if one
    was given) verified; one failed check per problem found; ``records`` counts the records
    read."""

    records: int = 0

    @property
    def problems(self) -> list[str]:
        """What failed, one sentence per problem."""
        return [check.detail for check in self.failures]

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "records": self.records}


@dataclass(frozen=True)
class Checkpoint:
    """``(log id, count, head)`` of a log at one moment, with a MAC under the log's key when it is
    keyed. Kept elsewhere, it lets :meth:`AuditStore.verify` prove the log still holds those
    ``count`` records unchanged (it may have grown since)."""

    log_id: str
    count: int
    head: str
    created: str
    keyed: bool
    mac: str | None = None

    def claims(self) -> bytes:
        return encode(self.log_id, self.count, self.head, self.created, str(self.keyed))

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT + "-checkpoint", **asdict(self)}

    def save(self, path: str | Path, *, overwrite: bool = False) -> None:
        path = Path(path)
        if path.exists() and not overwrite:
            raise InvalidArgumentError(f"{path} exists (pass overwrite to replace it)")
        try:
            path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        except OSError as error:
            raise InvalidArgumentError(f"cannot write {path}: {error.strerror}") from None

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        try:
            data = json.loads(Path(path).read_text())
        except OSError as error:
            raise InvalidArgumentError(f"cannot read {path}: {error.strerror}") from None
        except (ValueError, UnicodeDecodeError):
            raise InvalidArgumentError(f"{path} is not a JSON checkpoint") from None
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data: object, source: str = "checkpoint") -> Checkpoint:
        expected = {"log_id": str, "count": int, "head": str, "created": str, "keyed": bool}
        if not isinstance(data, dict) or data.get("format") != FORMAT + "-checkpoint":
            raise InvalidArgumentError(f"{source} is not a {FORMAT} checkpoint")
        for name, kind in expected.items():
            value = data.get(name)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise InvalidArgumentError(f"{source}: {name} must be a {kind.__name__}")
        if data["count"] < 1 or not _is_digest(data["head"]):
            raise InvalidArgumentError(f"{source}: count must be >= 1 and head a sha256 digest")
        mac = data.get("mac")
        if mac is not None and not _is_digest(mac):
            raise InvalidArgumentError(f"{source}: mac must be a sha256 digest")
        return cls(**{name: data[name] for name in expected}, mac=mac)

    @classmethod
    def parse_head(cls, text: str) -> tuple[int, str]:
        """``SEQ:HASH`` (as printed by ``lipguard audit checkpoint``) → ``(seq, hash)``."""
        seq, _, digest = text.partition(":")
        if not seq.isdigit() or int(seq) < 1 or not _is_digest(digest):
            raise InvalidArgumentError(f"a head looks like 42:<64 hex digits>, got {text!r}")
        return int(seq), digest


def _is_digest(value: object) -> bool:
    return (
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    )


def _key_bytes(key: bytes | str | None) -> bytes | None:
    if key is None:
        key = os.environ.get(KEY_VARIABLE)
        if key is None:
            return None
        if key == "":
            raise InvalidArgumentError(f"{KEY_VARIABLE} is set but empty: an empty key is no key")
    if isinstance(key, str):
        key = key.encode()
    if not isinstance(key, bytes) or not key:
        raise InvalidArgumentError("an audit key must be a non-empty string or bytes")
    return key


def _key_id(key: bytes) -> str:
    """A fingerprint of the key (not the key): tells a wrong key from a tampered log."""
    return hmac.new(key, b"lipguard-audit key id", hashlib.sha256).hexdigest()[:16]


def _url(target: str | Path) -> str:
    text = str(target)
    return text if "://" in text else f"sqlite:///{text}"


class AuditStore:
    """Append-only hash-chained log. ``target``: a file path (SQLite) or a SQLAlchemy URL.

    ``key`` (or ``LIPGUARD_AUDIT_KEY``): HMAC key of a keyed log. A new log is keyed if and only
    if a key is given, and stays so: opening a keyed log without its key, with another key, or an
    unkeyed log with a key raises :class:`AuditError`. ``create=False`` opens an existing log
    only (read-only for SQLite files), as verification and reports do: nothing is created or
    changed.
    """

    def __init__(
        self, target: str | Path, *, key: bytes | str | None = None, create: bool = True
    ) -> None:
        self.url = _url(target)
        self.key = _key_bytes(key)
        self.writable = create
        try:
            self.engine = self._engine(create)
            self.table = _table(MetaData())
            if create:
                self._retrying(self._create)
            elif not inspect(self.engine).has_table(TABLE):
                raise AuditError(
                    f"{target} holds no audit table: not an audit log, or its table was dropped "
                    "or renamed"
                )
            self.header = self._header()
        except SQLAlchemyError as error:
            raise AuditError(f"cannot open the audit store {target}: {_reason(error)}") from None
        self._check_key()

    # -- opening -------------------------------------------------------------------------------

    def _engine(self, create: bool) -> Engine:
        if not self.url.startswith("sqlite"):
            return create_engine(self.url)
        path = self.url.removeprefix("sqlite:///")
        if path in ("", ":memory:"):
            raise InvalidArgumentError("an audit store needs a file or a server, not memory")
        reader = f"sqlite:///file:{Path(path).resolve()}?mode=ro&uri=true"
        if not create:
            if not Path(path).is_file():
                raise AuditError(f"no audit log at {path}")
            if Path(path).stat().st_size == 0:
                raise AuditError(f"{path} is empty: not an audit log (or it was truncated)")
            url = reader
        else:
            if Path(path).is_file() and Path(path).stat().st_size > 0:
                _refuse_foreign(path, reader)  # lipguard's table goes into new files only
            if not Path(path).parent.is_dir():
                raise InvalidArgumentError(f"the folder of {path} does not exist")
            url = self.url
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S})
        event.listen(engine, "connect", _sqlite_writer if create else _sqlite_reader)
        event.listen(engine, "begin", _sqlite_begin)
        return engine

    def _create(self) -> None:
        with self._writing() as connection:
            if self.url.startswith("sqlite") and (problem := _foreign_schema(connection)):
                raise AuditError(f"{self.url} is not an audit log ({problem})")
            self.table.metadata.create_all(connection)
            if self._last(connection) is None:
                header = {
                    "format": FORMAT,
                    "log_id": uuid.uuid4().hex,
                    "keyed": self.key is not None,
                    "key_id": None if self.key is None else _key_id(self.key),
                    "mac": "hmac-sha256" if self.key is not None else "sha256",
                }
                self._insert_chained(connection, [(HEADER_KIND, canonical(header))], (0, GENESIS))

    def _header(self) -> dict[str, Any] | None:
        with self.engine.connect() as connection:
            row = connection.execute(select(self.table).where(self.table.c.seq == 1)).first()
        if row is None or row.kind != HEADER_KIND:
            return None
        try:
            header = json.loads(row.payload)
        except ValueError:
            return None
        return header if isinstance(header, dict) and header.get("format") == FORMAT else None

    def _check_key(self) -> None:
        if self.header is None:
            if self.writable:
                raise AuditError(
                    f"{self.url}: the first record is not a {FORMAT} header (an older or "
                    "tampered log); appending to it is refused"
                )
            return  # verify reports it
        keyed = self.header.get("keyed") is True
        if keyed and self.key is None:
            raise AuditError(
                f"this audit log is keyed: give its key (--key or {KEY_VARIABLE}); appending or "
                "verifying without it is refused"
            )
        if not keyed and self.key is not None:
            raise AuditError("this audit log is not keyed: a key cannot be added to it later")
        if self.key is not None and self.header.get("key_id") != _key_id(self.key):
            raise AuditError("the key is not this audit log's key")

    @property
    def log_id(self) -> str | None:
        return None if self.header is None else self.header.get("log_id")

    # -- writing -------------------------------------------------------------------------------

    def _writing(self) -> _Locked:
        """A write transaction that holds the log's write lock until it ends."""
        if not self.writable:
            raise AuditError("this audit store was opened read-only")
        return _Locked(self.engine)

    def _retrying(self, action: Callable[[], T]) -> T:
        """Run ``action`` (a whole transaction), retrying on lock contention and on a
        concurrent writer's duplicate sequence number."""
        delay = 0.01
        for attempt in range(ATTEMPTS):
            try:
                return action()
            except DBAPIError as error:
                if attempt == ATTEMPTS - 1 or not _transient(error):
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
        raise AssertionError("unreachable")

    def _hash(self, prev: str, seq: int, created: str, kind: str, payload: str) -> str:
        message = encode(prev, seq, created, kind, payload)
        if self.key:
            return hmac.new(self.key, message, hashlib.sha256).hexdigest()
        return hashlib.sha256(message).hexdigest()

    def _last(self, connection: Connection) -> tuple[int, str] | None:
        row = connection.execute(
            select(self.table.c.seq, self.table.c.hash).order_by(self.table.c.seq.desc()).limit(1)
        ).first()
        return None if row is None else (int(row.seq), str(row.hash))

    def head(self) -> tuple[int, str]:
        """``(seq, hash)`` of the last record: keep it elsewhere (or a :meth:`checkpoint`) to
        detect a truncated or rewritten tail later."""
        with self.engine.connect() as connection:
            return self._last(connection) or (0, GENESIS)

    def checkpoint(self) -> Checkpoint:
        """The log's current ``(log id, count, head)``, signed with the key when keyed."""
        if self.log_id is None:
            raise AuditError("the log has no valid header: no checkpoint can be made of it")
        count, head = self.head()
        created = datetime.datetime.now(datetime.UTC).isoformat()
        unsigned = Checkpoint(self.log_id, count, head, created, self.key is not None)
        if self.key is None:
            return unsigned
        mac = hmac.new(self.key, unsigned.claims(), hashlib.sha256).hexdigest()
        return Checkpoint(self.log_id, count, head, created, True, mac)

    def append(self, records: Iterable[tuple[str, Payload]]) -> int:
        """Append ``(kind, payload)`` records in one transaction; returns the last ``seq``.
        The records are durable when this returns; nothing is written if it raises."""
        prepared = []
        for kind, payload in records:
            if not isinstance(kind, str) or not 0 < len(kind) <= 64 or kind == HEADER_KIND:
                raise InvalidArgumentError(
                    f"record kinds are strings of 1 to 64 characters other than {HEADER_KIND!r}"
                )
            if not isinstance(payload, Mapping):
                raise InvalidArgumentError("an audit payload must be a mapping")
            prepared.append((kind, canonical(payload)))
        if not prepared:
            return self.head()[0]

        def transaction() -> int:
            with self._writing() as connection:
                last = self._last(connection)
                if last is None:
                    raise AuditError("the audit log lost its header while open")
                return self._insert_chained(connection, prepared, last)

        try:
            return self._retrying(transaction)
        except SQLAlchemyError as error:
            raise AuditError(f"cannot append to the audit store: {_reason(error)}") from None

    def _insert_chained(
        self, connection: Connection, records: Sequence[tuple[str, str]], last: tuple[int, str]
    ) -> int:
        """Insert ``(kind, canonical payload)`` records after ``last = (seq, hash)``."""
        seq, prev = last
        created = datetime.datetime.now(datetime.UTC).isoformat()  # the batch's time
        rows: list[_Row] = []
        for kind, payload in records:
            seq += 1
            digest = self._hash(prev, seq, created, kind, payload)
            rows.append((seq, created, kind, payload, prev, digest))
            prev = digest
        self._insert(connection, rows)
        return seq

    def _insert(self, connection: Connection, rows: list[_Row]) -> None:
        """One ``executemany`` on the transaction's own DBAPI connection: SQLAlchemy's
        per-row parameter processing would halve the write throughput. Drivers with other
        parameter styles go through SQLAlchemy."""
        columns = ("seq", "created", "kind", "payload", "prev_hash", "hash")
        style = self.engine.dialect.paramstyle
        marker = {"qmark": "?", "format": "%s", "pyformat": "%s"}.get(style)
        if marker is None:
            named = [dict(zip(columns, row, strict=True)) for row in rows]
            connection.execute(insert(self.table), named)
            return
        sql = (
            f"INSERT INTO {self.table.name} ({', '.join(columns)}) "
            f"VALUES ({', '.join([marker] * len(columns))})"
        )
        cursor = connection.connection.cursor()
        try:
            cursor.executemany(sql, rows)
        finally:
            cursor.close()

    # -- reading -------------------------------------------------------------------------------

    def records(self, kind: str | None = None) -> list[AuditRecord]:
        """Every record in sequence order (the header included); payloads that are not JSON
        objects (only in a tampered log) are returned as ``{"unreadable": text}``."""
        query = select(self.table).order_by(self.table.c.seq)
        if kind is not None:
            query = query.where(self.table.c.kind == kind)
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        return [
            AuditRecord(r.seq, r.created, r.kind, _payload(r.payload), r.prev_hash, r.hash)
            for r in rows
        ]

    def count(self) -> int:
        with self.engine.connect() as connection:
            return int(
                connection.execute(select(func.count()).select_from(self.table)).scalar_one()
            )

    def verify(
        self,
        expected_head: tuple[int, str] | None = None,
        *,
        checkpoint: Checkpoint | None = None,
    ) -> AuditVerification:
        """Recompute the chain; report every edited, missing or out-of-order record, a missing or
        foreign header, and — given ``expected_head=(seq, hash)`` or a ``checkpoint`` — a log
        that no longer holds that record unchanged (truncated, rewritten or swapped)."""
        problems: list[str] = []
        anchors: dict[int, str] = {}
        if checkpoint is not None:
            problems += self._checkpoint_problems(checkpoint)
            anchors[checkpoint.count] = checkpoint.head
        if expected_head is not None:
            anchors[int(expected_head[0])] = str(expected_head[1])
        if self.header is None:
            problems.append(f"record 1 is not a {FORMAT} header (missing, edited or older log)")
        prev, expected_seq, count = GENESIS, 1, 0
        try:
            with self.engine.connect() as connection:
                for row in connection.execute(select(self.table).order_by(self.table.c.seq)):
                    count += 1
                    problems += self._row_problems(row, expected_seq, prev)
                    if row.seq in anchors and anchors.pop(row.seq) != row.hash:
                        problems.append(
                            f"record {row.seq}: differs from the checkpoint's head "
                            "(the log was rewritten or swapped)"
                        )
                    prev, expected_seq = row.hash, row.seq + 1
        except SQLAlchemyError as error:
            raise AuditError(f"cannot read the audit store: {_reason(error)}") from None
        for seq in sorted(anchors):
            problems.append(
                f"record {seq} is missing: the log holds {count} records where the checkpoint "
                f"saw {seq} (the tail was truncated, or another log swapped in)"
            )
        if count == 0:
            problems.append("the log holds no records")
        checks = [Check("audit log", "fail", problem) for problem in problems]
        if not problems:
            anchored = " up to the checkpoint's head" if checkpoint or expected_head else ""
            checks.append(Check("audit log", "pass", f"{count} records chain{anchored}"))
        return AuditVerification(tuple(checks), count)

    def _row_problems(self, row: Row[Any], expected_seq: int, prev: str) -> list[str]:
        problems = []
        if row.seq != expected_seq:
            problems.append(
                f"record {row.seq}: expected sequence number {expected_seq} "
                "(records deleted or inserted)"
            )
        if row.prev_hash != prev:
            problems.append(
                f"record {row.seq}: does not link to its predecessor "
                "(deleted, reordered or forged records)"
            )
        if self._hash(row.prev_hash, row.seq, row.created, row.kind, row.payload) != row.hash:
            problems.append(f"record {row.seq}: hash mismatch (edited or forged)")
        elif row.seq > 1 and row.kind == HEADER_KIND:
            problems.append(f"record {row.seq}: a second header")
        return problems

    def _checkpoint_problems(self, checkpoint: Checkpoint) -> list[str]:
        problems = []
        if checkpoint.log_id != self.log_id:
            problems.append(
                f"the checkpoint is of log {checkpoint.log_id}, this is log {self.log_id} "
                "(another log swapped in)"
            )
        if checkpoint.keyed != (self.key is not None):
            problems.append("the checkpoint and the log disagree on whether the log is keyed")
        elif self.key is not None:
            expected = hmac.new(self.key, checkpoint.claims(), hashlib.sha256).hexdigest()
            if checkpoint.mac is None or not hmac.compare_digest(expected, checkpoint.mac):
                problems.append("the checkpoint's signature does not verify under the key")
        return problems


class _Locked:
    """Context manager: a connection in a transaction holding the log's write lock (SQLite:
    ``BEGIN IMMEDIATE``; PostgreSQL: ``pg_advisory_xact_lock``; others: ``SELECT … FOR UPDATE``
    semantics of the dialect are not relied on)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def __enter__(self) -> Connection:
        self.connection = self.engine.connect()
        if self.engine.dialect.name == "sqlite":
            self.connection = self.connection.execution_options(sqlite_begin="IMMEDIATE")
        self.transaction = self.connection.begin()
        try:
            if self.engine.dialect.name == "postgresql":
                self.connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_ID})
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self.connection

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if kind is None and self.transaction.is_active:
                self.transaction.commit()
            elif self.transaction.is_active:
                self.transaction.rollback()
        finally:
            self.connection.close()


#: a fixed 63-bit advisory-lock id for the audit table (the same in every process)
_LOCK_ID = int.from_bytes(hashlib.sha256(f"lipguard {TABLE}".encode()).digest()[:8], "big") >> 1


def _transient(error: DBAPIError) -> bool:
    """Lock contention or a concurrent writer's duplicate key: worth another try."""
    message = str(error.orig).lower()
    return any(
        part in message
        for part in ("locked", "busy", "unique", "duplicate", "deadlock", "serializ", "already")
    )


def _refuse_foreign(path: str, reader_url: str) -> None:
    """Refuse to write into an existing SQLite file that is not an audit log (someone else's
    database, or a log whose table was dropped), checked read-only so nothing changes.

    A file that holds the audit table passes, and so does a never-used database (schema version
    0, no schema objects): that is what a concurrent writer's brand-new log looks like between
    its switch to WAL mode and its first commit. A dropped table leaves the schema version
    above 0, so a log whose table was dropped is still refused.
    """
    engine = create_engine(reader_url)
    event.listen(engine, "connect", _sqlite_reader)
    try:
        with engine.connect() as connection:
            problem = _foreign_schema(connection)
    except SQLAlchemyError as error:
        raise AuditError(f"{path} is not an audit log: {_reason(error)}") from None
    finally:
        engine.dispose()
    if problem is not None:
        raise AuditError(
            f"{path} is not an audit log ({problem}); lipguard writes its log only into a new "
            "file or an existing log"
        )


def _foreign_schema(connection: Connection) -> str | None:
    """Why this SQLite database is not an audit log lipguard may write into, or None."""
    if inspect(connection).has_table(TABLE):
        return None
    objects = connection.exec_driver_sql("SELECT count(*) FROM sqlite_master").scalar_one()
    version = connection.exec_driver_sql("PRAGMA schema_version").scalar_one()
    if objects or version:
        return "no audit table"
    return None


def _reason(error: SQLAlchemyError) -> str:
    orig = getattr(error, "orig", None)
    return str(orig if orig is not None else error).splitlines()[0]


def _payload(text_: str) -> dict[str, Any]:
    try:
        value = json.loads(text_)
    except ValueError:
        return {"unreadable": text_}
    return value if isinstance(value, dict) else {"unreadable": text_}


def _sqlite_reader(connection: sqlite3.Connection, _: ConnectionPoolEntry) -> None:
    connection.isolation_level = None  # transactions are begun by _sqlite_begin


def _sqlite_writer(connection: sqlite3.Connection, record: ConnectionPoolEntry) -> None:
    _sqlite_reader(connection, record)
    cursor = connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
    finally:
        cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    mode = connection.get_execution_options().get("sqlite_begin", "DEFERRED")
    connection.exec_driver_sql(f"BEGIN {mode}")
