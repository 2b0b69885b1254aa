"""The DIMSE listener processes of `dicomlake serve`: as many as HTTP workers (`--workers`), each with its own
services, all accepting on one port (SO_REUSEPORT: the kernel spreads associations over them). They are
processes of their own so that associations neither share an interpreter lock with the HTTP side nor with
each other beyond one process's share, and a process ends with its parent whatever kills the parent."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
from multiprocessing.connection import Connection

from dicomlake.config import ConfigError, Settings

log = logging.getLogger("dicomlake.dimse")

START_SECONDS = 60


class ListenerProcesses:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._processes: list[multiprocessing.process.BaseProcess] = []

    def start(self) -> None:
        """Start every process and wait until each listens; ConfigError (one readable line) if one cannot."""
        self._check_port()
        context = multiprocessing.get_context("spawn")
        waiting = []
        for _ in range(max(1, self.settings.workers)):
            ours, theirs = context.Pipe(duplex=False)
            process = context.Process(target=_main, args=(self.settings, theirs), name="dicomlake-dimse", daemon=True)
            process.start()
            theirs.close()
            self._processes.append(process)
            waiting.append(ours)
        for conn in waiting:
            message = conn.recv() if conn.poll(START_SECONDS) else "did not start in time"
            if message != "ready":
                self.stop()
                raise ConfigError(
                    f"cannot listen for DIMSE on {self.settings.host}:{self.settings.dimse_port}: {message}"
                )

    def stop(self) -> None:
        for process in self._processes:
            if process.is_alive():
                process.terminate()
        for process in self._processes:
            process.join(timeout=15)
            if process.is_alive():
                process.kill()
                process.join()
        self._processes = []

    @property
    def _address(self) -> str:
        return f"{self.settings.host}:{self.settings.dimse_port}"

    def _check_port(self) -> None:
        # Binding with SO_REUSEPORT alone would share the port with any other process of this user that does the
        # same; a plain bind first tells a port in use apart from a free one.
        with socket.socket(_family(self.settings.host), socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the listeners: TIME_WAIT is no obstacle
            try:
                probe.bind((self.settings.host, self.settings.dimse_port))
            except OSError as exc:
                raise ConfigError(f"cannot listen for DIMSE on {self._address}: {exc.strerror}") from None


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _main(settings: Settings, conn: Connection) -> None:
    """One listener process: listen, say so, serve until told to stop or orphaned."""
    from dicomlake.dimse.listener import Listener
    from dicomlake.dimse.peers import Peers
    from dicomlake.services import open_services

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    parent = os.getppid()
    services = open_services(settings, create_schema=False)
    try:
        listener = Listener(
            services, settings.host, settings.dimse_port, Peers.read(settings.dimse_peers), bool(settings.tokens)
        )
        listener.start()
    except (OSError, ConfigError) as exc:
        conn.send(getattr(exc, "strerror", None) or str(exc))
        services.close()
        return
    conn.send("ready")
    conn.close()
    try:
        while not stopping.wait(0.5):
            if os.getppid() != parent:
                log.warning("the server process is gone; the DIMSE listener %d stops", os.getpid())
                break
    finally:
        listener.stop()
        services.close()
