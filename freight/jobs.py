"""Transfer jobs with a negotiated manner, for programs (docs/protocol.md
§16; the ``freight job`` command does the same)::

    import freight.jobs, freight.messaging

    async with freight.messaging.connect() as bus:
        done = await freight.jobs.send_job(bus, "bob", "inbox", [Path("photos")])
        print(done.line())      # job 3: 12 files, 1.2 GiB, BLAKE3 ok, by relay in 2.1 s
        done.check()            # raises JobFailed or JobMismatch if it did not succeed

    async with freight.messaging.connect() as bus:
        async for done in freight.jobs.receive_jobs(bus, "inbox", Path("in")):
            print(done.line())
"""

from __future__ import annotations

from .client.jobs import DEFAULT_MANNERS, JobOutcome, receive_jobs, send_job

__all__ = ["DEFAULT_MANNERS", "JobOutcome", "receive_jobs", "send_job"]
