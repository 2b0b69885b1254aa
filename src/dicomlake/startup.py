"""What every dicomlake process that does work runs for as long as it lives, `dicomlake serve` and
`dicomlake worker` alike: orphan blobs of this host's dead processes removed first, then the operations
runner and stream delivery, stopped and the services closed when the process ends."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from dicomlake.operations.runner import Runner
from dicomlake.operations.streaming import Streamer
from dicomlake.services import Services
from dicomlake.store import instances

log = logging.getLogger("dicomlake")


@contextmanager
def working(services: Services) -> Iterator[None]:
    """Recover, start the background work, and run the block; then stop the work and close `services`."""
    removed = instances.recover(services.db, services.blobs)
    if removed:
        log.warning("removed %d blobs of instances that were never committed", removed)
    settings = services.settings
    if settings.operation_threads:
        # The pool starts with the process (spawning goes on in the background) so that the first import
        # does not wait for it: ~2 s of a 1,000-file import, for ~75 MB PSS per idle process.
        services.warm_pool()
    runner = Runner(services, settings.operation_threads, settings.operation_lease_seconds)
    runner.start()
    streamer = Streamer(services)
    streamer.start()
    try:
        yield
    finally:
        streamer.stop()
        runner.stop()
        services.close()
