"""The chatledger domain: session and visitor aggregates, their events and policy.

Pure Python: this package imports only the standard library, pydantic and
``eventsourcing.domain``. It does no I/O and never reads the wall clock; every
command takes the business time (``at``) from its caller.
"""
