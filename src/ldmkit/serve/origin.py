"""Which requests come from another web site's page, and are refused (403).

A browser lets any page send a "simple" POST (text/plain, no-cors) to any address, the user's own
`ldm serve` on 127.0.0.1 included: a page of another site kept a user's GPU busy that way. Such a
request carries an `Origin` header naming that site, so a request whose Origin is not this server
is refused. A page can also rename itself to this server's address (DNS rebinding: its host name
made to resolve to 127.0.0.1), and then read the answers too; its requests still carry its own
host name in `Host`, so a server listening on a loopback address answers only requests addressed
to a loopback name. Clients that are not browsers (curl, Python) send no Origin and a loopback
Host, and are served as before; a server started with `--host 0.0.0.0` (for a LAN) takes any Host.
Behind a reverse proxy the browser's Origin (and, with `proxy_set_header Host $host`, the Host)
names the proxy's site: `ldm serve --allow-host NAME` accepts that name in both.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Collection, Mapping
from urllib.parse import urlsplit

LOOPBACK_NAMES = {"localhost", "localhost.", "ip6-localhost"}


def _is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _names_this_machine(host: str) -> bool:
    """Whether a Host header's name reaches this machine from its own browser: a loopback name,
    any *.localhost (browsers resolve them to loopback), or 0.0.0.0 (Linux routes it here)."""
    host = host.strip("[]").lower()
    return _is_loopback(host) or host.endswith(".localhost") or host == "0.0.0.0"


def _hostname(host_header: str) -> str:
    """The host name of a Host header value ("127.0.0.1:8000", "[::1]:8000", "localhost"); "" for
    one that is no host ("[::1" made urlsplit raise, a traceback in the server's log)."""
    try:
        return urlsplit(f"//{host_header}").hostname or ""
    except ValueError:
        return ""


def _netloc(origin: str) -> tuple[str, str]:
    """(host:port, host name) of an Origin header value; empty for one that is no URL."""
    try:
        parts = urlsplit(origin)
        return parts.netloc.lower(), parts.hostname or ""
    except ValueError:
        return "", ""


def foreign_request(headers: Mapping[str, str], bound_host: str, allowed: Collection[str] = ()) -> str | None:
    """Why the request with these headers came from another site's page, or None when it did not.
    `allowed`: host names accepted besides this server's own (`--allow-host`, a reverse proxy's)."""
    host = headers.get("Host")
    origin = headers.get("Origin")
    names = {name.lower() for name in allowed}
    if host and _is_loopback(bound_host) and not (_names_this_machine(_hostname(host)) or _hostname(host) in names):
        return (f"this server answers requests addressed to its loopback address, not to {host!r}: open it as "
                "http://127.0.0.1:PORT/, start it with --host 0.0.0.0 to serve other machines, or, behind a "
                "reverse proxy, with --allow-host NAME")
    origin_netloc, origin_name = _netloc(origin) if origin is not None else ("", "")
    if origin is not None and origin_netloc != (host or "").lower() and origin_name not in names:
        return (f"requests from another site's page (Origin {origin}) are refused; open this server's own page "
                "(behind a reverse proxy, start it with --allow-host NAME for the proxy's host name)")
    return None


def address_family(host: str) -> socket.AddressFamily:
    """IPv6 for an IPv6 address ("::1", "::"), else IPv4 (a name is looked up as IPv4)."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET
