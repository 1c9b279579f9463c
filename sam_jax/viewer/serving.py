"""Serving the viewer: a listening socket bound before the URL is printed (so that port 0 reports the port it got),
localhost unless told otherwise, and the uvicorn server on it."""

from __future__ import annotations

import socket

import uvicorn

LOCALHOST = "127.0.0.1"


def bind(host: str = LOCALHOST, port: int = 0) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


def make_server(application) -> uvicorn.Server:
    """The server; `.run(sockets=[bind(...)])` serves until interrupted (or until `.should_exit` is set)."""
    return uvicorn.Server(uvicorn.Config(application, log_level="warning"))
