"""X-Forwarded-* headers, believed only from the proxies we run (the tunnel agent on loopback).

Werkzeug's ProxyFix believes whoever sends them: a client sending `X-Forwarded-Host: evil.example`
got that host in the image URLs we hand out, and any client could pose as any address to the
per-client Socket.IO cap. Here a request from a trusted proxy goes through ProxyFix (one hop);
any other has the headers removed, so nothing downstream can read them by mistake.
"""
from __future__ import annotations

import ipaddress

from werkzeug.middleware.proxy_fix import ProxyFix

FORWARDED_HEADERS = ("HTTP_FORWARDED", "HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO", "HTTP_X_FORWARDED_HOST",
                     "HTTP_X_FORWARDED_PORT", "HTTP_X_FORWARDED_PREFIX")


def parse_networks(entries: list[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Addresses or CIDR networks; a bad entry is a settings error, raised at start-up."""
    return [ipaddress.ip_network(entry.strip(), strict=False) for entry in entries if entry.strip()]


class TrustedProxyFix:
    def __init__(self, app, trusted: list[str]):
        self.app = app
        self.networks = parse_networks(trusted)
        self.fixed = ProxyFix(app, x_for=1, x_proto=1, x_host=1)

    def trusts(self, address: str | None) -> bool:
        try:
            ip = ipaddress.ip_address((address or "").split("%")[0])
        except ValueError:
            return False
        if getattr(ip, "ipv4_mapped", None) is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.networks)

    def __call__(self, environ, start_response):
        if self.trusts(environ.get("REMOTE_ADDR")):
            return self.fixed(environ, start_response)
        for name in FORWARDED_HEADERS:
            environ.pop(name, None)
        return self.app(environ, start_response)
