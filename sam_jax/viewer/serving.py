"""Serving the viewer: a listening socket bound before the model loads and the URL is printed (so that a busy port
is told at once and port 0 reports the port it got), localhost unless told otherwise, and the uvicorn server on it."""

from __future__ import annotations

import ipaddress
import socket

import uvicorn

LOCALHOST = "127.0.0.1"


def bind(host: str = LOCALHOST, port: int = 0) -> socket.socket:
    """A socket listening on (host, port): held from now on (connections wait while the model loads), so that no
    other process takes the port meanwhile; `OSError` for a busy port or an address not of this machine."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen()  # SO_REUSEADDR lets two sockets bind one port until one of them listens
    except BaseException:
        sock.close()
        raise
    return sock


def url(sock: socket.socket, token: str) -> str:
    """The address to open: the socket's, with the viewer's token."""
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/?token={token}"


def loopback(sock: socket.socket) -> bool:
    """Whether only this machine reaches the socket."""
    return ipaddress.ip_address(sock.getsockname()[0]).is_loopback


def make_server(application) -> uvicorn.Server:
    """The server; `.run(sockets=[bind(...)])` serves until interrupted (or until `.should_exit` is set)."""
    return uvicorn.Server(uvicorn.Config(application, log_level="warning"))
