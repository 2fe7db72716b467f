"""The use cases behind the facade: receive, session commands, reads, housekeeping, audit and erasure,
sharing one unit of work; :mod:`.bootstrap` is the composition root and :mod:`.ledger` the facade."""
