"""One round trip per write on PostgreSQL: a database function that inserts a batch.

``chatledger_insert_events_v1`` does in one statement, in its caller's
autocommit transaction, what the pipelined write of
:meth:`~chatledger.infrastructure.postgres.PostgresLedgerRecorder.insert_events_in_pipeline`
does in one transaction: it sets ``lock_timeout`` for the transaction, takes
eventsourcing's ``LOCK TABLE … IN EXCLUSIVE MODE`` on the events table (held
through COMMIT, as the library holds it, so notification ids become visible in
order), inserts the events and their hash rows, notifies the library's channel,
inserts the batch's new keys and key owners, and checks every key the batch's
envelopes use. A stale key raises ``SQLSTATE`` :data:`STALE_KEYS_SQLSTATE`, which
rolls the whole statement back; the recorder then writes the batch again through
the pipelined path, whose check in the transaction tells the key ring what is
stale and raises :class:`~chatledger.infrastructure.recording.StaleKeyError`.

The client sends one statement (prepared once per connection) and waits once:
no ``BEGIN``, no ``SET LOCAL``, no pipeline sync before COMMIT. The hashes are
computed by the client before the call, as on the pipelined path.

Batches with an erasure (which destroys keys) or with recorder keyword
arguments go through the pipelined path; so does every batch of a store whose
function is missing (created by a version before this one with table creation
turned off since).
"""

from __future__ import annotations

from psycopg.sql import SQL, Composed, Identifier, Literal

from ...domain.table_prefix import table_name
from ..recording import LedgerTableNames

FUNCTION_NAME = "chatledger_insert_events_v1"
"""Versioned: a change of the function's meaning gets a new name, so processes of
two versions writing one store each call their own. Under another table prefix
than the default: ``<prefix>insert_events_v1`` (:func:`function_name`)."""
STALE_KEYS_SQLSTATE = "CLK01"
UNDEFINED_FUNCTION_SQLSTATE = "42883"


def function_name(prefix: str) -> str:
    return table_name(prefix, FUNCTION_NAME)


def create_statement(schema: str, events_table: str, channel: str, names: LedgerTableNames) -> Composed:
    """``CREATE OR REPLACE FUNCTION`` (run under the schema's creation lock)."""
    s = Identifier(schema)

    def q(table: str) -> Composed:
        return SQL("{}.{}").format(s, Identifier(table))

    return SQL(
        "CREATE OR REPLACE FUNCTION {fn}(lock_timeout text, oids uuid[], versions bigint[], topics text[], "
        "states bytea[], hashes bytea[], new_kids text[], new_visitors text[], new_keys bytea[], "
        "owner_ids uuid[], owner_visitors text[], used_kids text[], used_visitors text[]) "
        # Every table is schema-qualified; the built-ins (unnest, set_config, pg_notify,
        # now) must not resolve to a same-named function another schema on the caller's
        # search_path defines.
        "RETURNS SETOF bigint LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $body$ "
        "BEGIN "
        "PERFORM set_config('lock_timeout', lock_timeout, true); "
        "LOCK TABLE {events} IN EXCLUSIVE MODE; "
        "RETURN QUERY WITH ev AS (INSERT INTO {events} (originator_id, originator_version, topic, state) "
        "SELECT * FROM unnest(oids, versions, topics, states) RETURNING notification_id), "
        "n AS (SELECT ev.notification_id, row_number() OVER (ORDER BY ev.notification_id) AS i FROM ev), "
        "h AS (INSERT INTO {hashes} SELECT n.notification_id, x.oid, x.ver, x.eh, ''::bytea FROM n "
        "JOIN unnest(oids, versions, hashes) WITH ORDINALITY AS x(oid, ver, eh, i) USING (i)) "
        "SELECT n.notification_id FROM n ORDER BY n.notification_id; "
        "PERFORM pg_notify({channel}, ''); "
        "IF cardinality(new_kids) > 0 THEN "
        "INSERT INTO {keys} SELECT k, v, b, now() FROM unnest(new_kids, new_visitors, new_keys) AS x(k, v, b) "
        "ON CONFLICT DO NOTHING; END IF; "
        "IF cardinality(owner_ids) > 0 THEN "
        "INSERT INTO {owners} SELECT a, v FROM unnest(owner_ids, owner_visitors) AS x(a, v) "
        "ON CONFLICT (aggregate_id) DO NOTHING; END IF; "
        "IF cardinality(used_kids) > 0 AND EXISTS (SELECT 1 FROM unnest(used_kids, used_visitors) AS u(k, v) "
        "WHERE NOT EXISTS (SELECT 1 FROM {keys} c WHERE c.kid = u.k AND c.visitor_id = u.v) "
        "OR EXISTS (SELECT 1 FROM {destroyed} d WHERE d.kid = u.k)) THEN "
        "RAISE EXCEPTION USING ERRCODE = {stale}, MESSAGE = 'chatledger: stale content keys'; END IF; "
        "END $body$"
    ).format(
        fn=q(function_name(names.table_prefix)),
        events=q(events_table),
        hashes=q(names.HASHES),
        keys=q(names.KEYS),
        owners=q(names.KEY_OWNERS),
        destroyed=q(names.DESTROYED),
        channel=Literal(channel),
        stale=Literal(STALE_KEYS_SQLSTATE),
    )


def call_statement(schema: str, prefix: str) -> Composed:
    """The call: thirteen parameters, the batch's notification ids in order. The
    arrays go in binary, encoded by :mod:`.array_params` (a NUL in a text element
    is refused there before anything is sent, as psycopg refuses it)."""
    types = ("uuid", "bigint", "text", "bytea", "bytea", "text", "text", "bytea", "uuid", "text", "text", "text")
    return SQL("SELECT f.id FROM {}.{}(%s, {}) AS f(id)").format(
        Identifier(schema), Identifier(function_name(prefix)), SQL(", ").join(SQL("%b::" + t + "[]") for t in types)
    )
