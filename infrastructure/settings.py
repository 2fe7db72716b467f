"""Configuration: one database URL plus a few tuning knobs, read by pydantic-settings.

Every field can be set by an environment variable ``CHATLEDGER_<FIELD>``, for
example ``CHATLEDGER_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test``.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from ..domain.errors import ConfigurationError
from ..domain.table_prefix import DEFAULT_PREFIX, check_prefix
from ..domain.validation import ID_CEILING, TEXT_CEILING, Limits

DEFAULT_DATABASE_URL = "sqlite:///chatledger.db"


class PostgresTarget(NamedTuple):
    """Where a ``postgresql://`` URL points, with the defaults filled in."""

    dbname: str
    host: str
    port: int
    user: str
    password: str | None


class Settings(BaseSettings):
    """chatledger's settings. ``database_url`` picks the store:

    - ``sqlite:///chat.db`` (default: a file in the working directory, WAL mode),
      ``sqlite:////abs/path/chat.db``, or ``sqlite:///:memory:`` for throwaway use;
    - ``postgresql://user:password@host:5432/dbname?schema=name`` (schema optional).
    """

    model_config = SettingsConfigDict(env_prefix="CHATLEDGER_", frozen=True, extra="forbid")

    database_url: str = DEFAULT_DATABASE_URL
    table_prefix: str = DEFAULT_PREFIX  # every table's, index's, function's (domain/table_prefix.py)
    snapshot_interval: int = Field(default=100, ge=2)
    cache_size: int = Field(default=5000, ge=0)  # aggregates (a conversation uses 2); 0 = off
    conflict_retries: int = Field(default=50, ge=1)
    sqlite_lock_timeout_s: int = Field(default=30, ge=1)
    postgres_pool_size: int = Field(default=5, ge=1)
    postgres_max_overflow: int = Field(default=10, ge=0)
    # The log seal (see infrastructure/sealing.py and docs/compliance.md).
    seal_every_events: int = Field(default=1000, ge=0)  # in-process seal every N events written; 0 = off
    seal_interval_s: float = Field(default=1.0, gt=0)  # the worker's seal job
    audit_tail_max_events: int = Field(default=5000, ge=0)  # verify --strict: the longest unsealed tail
    audit_tail_max_age_s: float = Field(default=10.0, ge=0)  # verify --strict: its oldest event's age
    read_wait_timeout_s: float = Field(default=5.0, gt=0, le=3600)  # queries with after=: the bound
    # Keys outside the database (see infrastructure/key_providers.py and docs/operations.md).
    master_key: SecretStr | None = None  # "ID:BASE64[,ID:BASE64...]", the current one first
    master_key_file: str | None = None  # a file holding the same (when master_key is unset)
    key_vault: str | None = None  # the key vault file (per-key wrapping keys erasure can forget)
    key_vault_create: bool = False  # make the key vault file if it does not exist (else refused)
    key_provider: str | None = None  # "module:factory" of a KMS/Vault provider (overrides the above)
    # Who appends (see domain/actors.py): the actor of events appended with none set by acting_as.
    actor: str = Field(default="unknown", pattern=r"^[A-Za-z0-9._:@/+=-]{1,128}$")
    # The limits of domain.validation.Limits (see there and docs/api.md).
    max_text_chars: int = Field(default=TEXT_CEILING, ge=1, le=TEXT_CEILING)
    max_id_chars: int = Field(default=ID_CEILING, ge=1, le=ID_CEILING)
    max_json_bytes: int = Field(default=64 * 1024, ge=2, le=16 * 1024 * 1024)
    max_json_depth: int = Field(default=32, ge=1, le=128)

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as err:
            problems = "; ".join(
                f"{_setting(e['loc'])}: {e['msg']} (got {_shown(e.get('input'))})"
                for e in err.errors()
            )
            raise ConfigurationError(
                f"Invalid setting ({problems}). Fix the keyword argument or the "
                "CHATLEDGER_<NAME> environment variable."
            ) from None
        check_prefix(self.table_prefix)

    @property
    def limits(self) -> Limits:
        return Limits(
            max_text_chars=self.max_text_chars,
            max_id_chars=self.max_id_chars,
            max_json_bytes=self.max_json_bytes,
            max_json_depth=self.max_json_depth,
        )

    def url(self) -> URL:
        try:
            url = make_url(self.database_url)
        except ArgumentError as err:
            raise ConfigurationError(
                f"Cannot parse database URL {self.database_url!r}; use "
                "'sqlite:///file.db' or 'postgresql://user@host:5432/dbname'."
            ) from err
        parts = [url.username, url.password, url.host, url.database]
        parts += [v for value in url.query.values() for v in ([value] if isinstance(value, str) else value)]
        if any(part is not None and "\x00" in str(part) for part in parts):
            raise ConfigurationError(
                f"database_url (CHATLEDGER_DATABASE_URL) {self.database_url!r} holds a NUL "
                "character (%00); no file, database or schema can be named with one."
            )
        schema = url.query.get("schema")
        if isinstance(schema, str) and len(schema.encode("utf-8")) > 63:
            raise ConfigurationError(
                f"database_url (CHATLEDGER_DATABASE_URL): the schema name {schema[:20]!r}... is "
                f"{len(schema.encode('utf-8'))} bytes; PostgreSQL names are at most 63 (it would "
                "cut it short, to a schema another URL may name too). Use a shorter schema."
            )
        return url

    @property
    def backend(self) -> str:
        name = self.url().get_backend_name()
        if name not in ("sqlite", "postgresql"):
            raise ConfigurationError(
                f"Unsupported database {name!r} in {self.database_url!r}; "
                "chatledger runs on 'sqlite' or 'postgresql'."
            )
        return name

    @property
    def sqlite_path(self) -> str | None:
        """The SQLite file as an absolute path, or None for an in-memory database
        (``sqlite:///:memory:``, or no file named)."""
        database = self.url().database
        return None if not database or database == ":memory:" else os.path.abspath(database)

    @property
    def postgres_target(self) -> PostgresTarget:
        """The PostgreSQL database, host, port, user and password (defaults:
        ``postgres`` on 127.0.0.1:5432 as ``postgres``, no password)."""
        url = self.url()
        return PostgresTarget(
            dbname=url.database or "postgres",
            host=url.host or "127.0.0.1",
            port=url.port or 5432,
            user=url.username or "postgres",
            password=url.password or None,
        )

    @property
    def postgres_schema(self) -> str | None:
        schema = self.url().query.get("schema")
        return schema if isinstance(schema, str) else None


def _setting(loc: tuple[int | str, ...]) -> str:
    name = ".".join(str(p) for p in loc) or "settings"
    return f"{name} (CHATLEDGER_{name.upper()})"


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
