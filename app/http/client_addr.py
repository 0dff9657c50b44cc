"""The client's address: the socket peer, or what trusted proxies say it is.

X-Forwarded-For is walked from the right, past trusted proxies, to the first address they
vouch for; the answer is normalised so one client has one rate-limit key. The rules, in
order: see docs/envelope.md ("Client addresses").
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

Address = IPv4Address | IPv6Address
Networks = tuple[IPv4Network | IPv6Network, ...]


def parse_address(text: str) -> Address | None:
    """An IP address from a forwarded entry or a peer address, or None if it is not one."""
    text = text.strip()
    if not text or len(text) > 64:
        return None
    if text.startswith("["):  # [v6] or [v6]:port
        end = text.find("]")
        if end < 0 or (end + 1 < len(text) and not _is_port(text[end + 1:])):
            return None
        text = text[1:end]
    elif text.count(":") == 1:  # v4:port
        host, _, port = text.partition(":")
        if not port.isdigit():
            return None
        text = host
    try:
        address = ip_address(text)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_port(text: str) -> bool:
    return text.startswith(":") and text[1:].isdigit()


def is_trusted(address: Address, trusted: Networks) -> bool:
    return any(address in network for network in trusted)


def client_address(remote_addr: str, x_forwarded_for: str | None, trusted: Networks) -> str:
    """The address a request comes from, believing X-Forwarded-For only from `trusted` peers."""
    if not trusted:
        return remote_addr
    peer = parse_address(remote_addr or "")
    if peer is None:
        return remote_addr
    if not is_trusted(peer, trusted):
        return str(peer)
    if not x_forwarded_for:
        return str(peer)
    nearest = peer  # the last address the walk could vouch for
    for entry in reversed(x_forwarded_for.split(",")):
        address = parse_address(entry)
        if address is None:
            return str(nearest)
        if not is_trusted(address, trusted):
            return str(address)
        nearest = address
    return str(nearest)
