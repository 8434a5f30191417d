"""A tamper-evident, append-only audit log on SQLAlchemy (SQLite by default, PostgreSQL by URL).

Every record carries a sequence number, a UTC timestamp, a kind, a JSON payload and the hash
of its predecessor; its own hash is

    h_i = MAC(h_{i-1} ‖ seq_i ‖ time_i ‖ kind_i ‖ canonical_json(payload_i))

with ``MAC`` = SHA-256, or HMAC-SHA-256 when a secret ``key`` is given. :meth:`AuditStore.verify`
walks the log in sequence order and recomputes the chain, so an edited record (its hash no
longer matches), a deleted one (a gap in the sequence, a broken link), reordered ones (broken
links) or a forged tail are found. Without a key, someone who rewrites the *whole* tail and
recomputes every hash is only caught by comparing :meth:`AuditStore.head` with a value kept
elsewhere (``verify(expected_head=...)``); with a key they cannot recompute the hashes at all.

Writes are batched (:meth:`AuditStore.append` takes many records, one transaction). SQLite runs
in WAL mode with ``synchronous=FULL``: a transaction that has returned is on disk, so killing
the writer (even with ``kill -9``) loses nothing that was committed.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

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
    select,
)
from sqlalchemy.exc import SQLAlchemyError

from lipguard.errors import InvalidArgumentError, LipguardError

GENESIS = "0" * 64
KEY_VARIABLE = "LIPGUARD_AUDIT_KEY"


class AuditError(LipguardError, RuntimeError):
    """The audit store cannot be opened (bad URL, unreachable server, unwritable file)."""


def _table(metadata: MetaData) -> Table:
    return Table(
        "audit_records",
        metadata,
        Column("seq", Integer, primary_key=True, autoincrement=False),
        Column("created", String(40), nullable=False),
        Column("kind", String(64), nullable=False),
        Column("payload", Text, nullable=False),
        Column("prev_hash", String(64), nullable=False),
        Column("hash", String(64), nullable=False),
    )


def canonical(payload: Mapping) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=float)


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    created: str
    kind: str
    payload: dict
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    records: int
    problems: list[str] = field(default_factory=list)


def _url(target: str | Path) -> str:
    text = str(target)
    return text if "://" in text else f"sqlite:///{text}"


class AuditStore:
    """Append-only hash-chained log. ``target``: a file path (SQLite) or a SQLAlchemy URL."""

    def __init__(self, target: str | Path, *, key: bytes | str | None = None) -> None:
        self.url = _url(target)
        key = key if key is not None else os.environ.get(KEY_VARIABLE)
        self.key = key.encode() if isinstance(key, str) else key
        try:
            self.engine = create_engine(self.url)
            if self.engine.dialect.name == "sqlite":
                event.listen(self.engine, "connect", _sqlite_pragmas)
            self.table = _table(MetaData())
            self.table.metadata.create_all(self.engine)
        except SQLAlchemyError as error:
            raise AuditError(f"cannot open the audit store {self.url}: {error}") from None

    def _hash(self, prev: str, seq: int, created: str, kind: str, payload: str) -> str:
        message = f"{prev}|{seq}|{created}|{kind}|{payload}".encode()
        if self.key:
            return hmac.new(self.key, message, hashlib.sha256).hexdigest()
        return hashlib.sha256(message).hexdigest()

    def head(self) -> tuple[int, str]:
        """``(seq, hash)`` of the last record (``(0, GENESIS)`` when empty): keep it elsewhere
        to detect a rewritten tail later."""
        with self.engine.connect() as connection:
            row = connection.execute(
                select(self.table.c.seq, self.table.c.hash)
                .order_by(self.table.c.seq.desc())
                .limit(1)
            ).first()
        return (0, GENESIS) if row is None else (int(row.seq), str(row.hash))

    def append(self, records: Iterable[tuple[str, Mapping]]) -> int:
        """Append ``(kind, payload)`` records in one transaction; returns the last ``seq``.
        The records are durable when this returns."""
        with self.engine.begin() as connection:
            row = connection.execute(
                select(self.table.c.seq, self.table.c.hash)
                .order_by(self.table.c.seq.desc())
                .limit(1)
                .with_for_update()
            ).first()
            seq, prev = (0, GENESIS) if row is None else (int(row.seq), str(row.hash))
            rows = []
            created = datetime.datetime.now(datetime.UTC).isoformat()  # the batch's time
            for kind, payload in records:
                if not isinstance(kind, str) or len(kind) > 64:
                    raise InvalidArgumentError("record kinds are strings of at most 64 characters")
                seq += 1
                text = canonical(payload)
                digest = self._hash(prev, seq, created, kind, text)
                rows.append((seq, created, kind, text, prev, digest))
                prev = digest
            if rows:
                self._insert(connection, rows)
        return seq

    def _insert(self, connection, rows: list[tuple]) -> None:
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

    def records(self, kind: str | None = None) -> list[AuditRecord]:
        query = select(self.table).order_by(self.table.c.seq)
        if kind is not None:
            query = query.where(self.table.c.kind == kind)
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        return [
            AuditRecord(r.seq, r.created, r.kind, json.loads(r.payload), r.prev_hash, r.hash)
            for r in rows
        ]

    def count(self) -> int:
        with self.engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(self.table)).scalar())

    def verify(self, expected_head: tuple[int, str] | None = None) -> VerifyReport:
        """Recompute the chain; report every edited, missing or out-of-order record."""
        problems: list[str] = []
        prev, expected_seq, count = GENESIS, 1, 0
        query = select(self.table).order_by(self.table.c.seq)
        with self.engine.connect() as connection:
            for row in connection.execute(query):
                count += 1
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
                digest = self._hash(row.prev_hash, row.seq, row.created, row.kind, row.payload)
                if digest != row.hash:
                    problems.append(f"record {row.seq}: hash mismatch (edited)")
                prev, expected_seq = row.hash, row.seq + 1
        if expected_head is not None and (expected_seq - 1, prev) != tuple(expected_head):
            problems.append(
                f"head is ({expected_seq - 1}, {prev[:12]}…), expected "
                f"({expected_head[0]}, {str(expected_head[1])[:12]}…): the tail "
                "was truncated or rewritten"
            )
        return VerifyReport(not problems, count, problems)


def _sqlite_pragmas(connection, _) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()
