"""The transfer engine, between :mod:`freight.transport` (which moves
frames) and the roles (client, hub, agent) that decide what to transfer.

* :mod:`.hashing` — the one BLAKE3 helper (running hashers, file digests);
* :mod:`.partial` — a resumable partial file with a pluggable checkpoint store;
* :mod:`.pipeline` — read-ahead and write-behind, bounded in bytes;
* :mod:`.streams` — drive the stream machines from a source or into a sink.

The engine may import :mod:`freight.transport` and :mod:`freight.protocol`,
never the roles.
"""
