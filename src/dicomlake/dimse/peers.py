"""The DIMSE peers a listener knows: the AEs that may call it and the destinations of C-MOVE, read from a file of
`AE_TITLE host port` lines (blank lines and `#` comments ignored)."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path

from dicomlake.config import ConfigError

# PS3.5 AE VR: up to 16 characters of the default repertoire, no backslash or control characters.
MAX_AE_TITLE = 16


@dataclass(frozen=True)
class Peer:
    ae_title: str
    host: str
    port: int

    def addresses(self) -> set[str]:
        """The IP addresses `host` names now (a peer that connects from one of them is this peer)."""
        try:
            return {str(info[4][0]) for info in socket.getaddrinfo(self.host, None, proto=socket.IPPROTO_TCP)}
        except OSError:
            return set()


def check_ae_title(text: str, what: str = "AE title") -> str:
    """`text` without padding, if it is a valid AE title; ConfigError otherwise."""
    title = text.strip()
    if not 0 < len(title) <= MAX_AE_TITLE or any(ch == "\\" or not 0x20 <= ord(ch) < 0x7F for ch in title):
        raise ConfigError(f"{what} must be 1 to {MAX_AE_TITLE} printable ASCII characters without '\\', got {text!r}")
    return title


class Peers:
    """Peers by AE title, matched ignoring case as AE titles are in practice."""

    def __init__(self, peers: list[Peer]) -> None:
        self._by_title = {p.ae_title.upper(): p for p in peers}

    def __len__(self) -> int:
        return len(self._by_title)

    def get(self, ae_title: str) -> Peer | None:
        return self._by_title.get(ae_title.strip().upper())

    def allows(self, ae_title: str, address: str) -> bool:
        """Whether a caller with this AE title, connecting from `address`, is a listed peer."""
        peer = self.get(ae_title)
        return peer is not None and _same_address(address, peer.addresses())

    @classmethod
    def read(cls, path: Path | None) -> Peers:
        if path is None:
            return cls([])
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read DIMSE peers file {path}: {getattr(exc, 'strerror', None) or exc}") from exc
        peers: list[Peer] = []
        for number, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            where = f"DIMSE peers file {path}, line {number}"
            parts = line.split()
            if len(parts) != 3:
                raise ConfigError(f"{where}: expected 'AE_TITLE host port', got {line!r}")
            title = check_ae_title(parts[0], f"{where}: the AE title")
            try:
                port = int(parts[2])
            except ValueError:
                port = 0
            if not 0 < port < 65536:
                raise ConfigError(f"{where}: port must be between 1 and 65535, got {parts[2]!r}")
            if any(p.ae_title.upper() == title.upper() for p in peers):
                raise ConfigError(f"{where}: AE title {title} is listed twice")
            peers.append(Peer(title, parts[1], port))
        return cls(peers)


def _same_address(address: str, addresses: set[str]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(_ip(a) == ip for a in addresses)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None
