"""Shared pytest fixtures for the whole project.

* ``block_network`` (autouse, session-wide): every test runs with the network blocked.  Opening a
  socket connection (or resolving a host name) to anything but this machine raises
  :class:`NetworkBlocked`.  Allowed: AF_UNIX sockets, 127.0.0.0/8, ::1 and ``localhost`` — the
  browser test talks to a local Streamlit server.  Child processes (torchrun, streamlit) are not
  patched; they get no network either way on the test machines.
* ``blocked_connections``: the list of attempts the guard refused, for tests that assert none.
* ``OMP_WAIT_POLICY=PASSIVE`` by default (see below).
"""

from __future__ import annotations

import ipaddress
import os
import socket

import pytest

# Tests share a small machine with other work: OpenMP threads that spin while waiting (torch,
# faiss) then run up to 10x slower.  Passive waiting must be set before those libraries load.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback", ""}


class NetworkBlocked(OSError):
    """A test tried to reach the network.  An OSError, like a real offline failure."""


def _is_local_host(host) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host).strip("[]").split("%", 1)[0].lower()
    if host in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_local_address(family, address) -> bool:
    if family == getattr(socket, "AF_UNIX", object()) or isinstance(address, (str, bytes)):
        return True  # a filesystem/abstract socket path
    if isinstance(address, tuple) and address:
        return _is_local_host(address[0])
    return False


@pytest.fixture(scope="session")
def blocked_connections() -> list:
    """Addresses the network guard refused during this session."""
    return []


@pytest.fixture(scope="session", autouse=True)
def block_network(blocked_connections):
    """Make any non-loopback connection or name lookup raise NetworkBlocked, for every test."""
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_sendto, real_getaddrinfo = socket.socket.sendto, socket.getaddrinfo

    def refuse(what):
        blocked_connections.append(what)
        raise NetworkBlocked(f"network access blocked in tests: {what!r}")

    def connect(sock, address):
        if not _is_local_address(sock.family, address):
            refuse(address)
        return real_connect(sock, address)

    def connect_ex(sock, address):
        if not _is_local_address(sock.family, address):
            refuse(address)
        return real_connect_ex(sock, address)

    def sendto(sock, data, *args):
        address = args[-1]
        if not _is_local_address(sock.family, address):
            refuse(address)
        return real_sendto(sock, data, *args)

    def getaddrinfo(host, *args, **kwargs):
        if not _is_local_host(host):
            refuse(host)
        return real_getaddrinfo(host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", connect)
        patch.setattr(socket.socket, "connect_ex", connect_ex)
        patch.setattr(socket.socket, "sendto", sendto)
        patch.setattr(socket, "getaddrinfo", getaddrinfo)
        yield


@pytest.fixture()
def through_app_py(monkeypatch):
    """For AppTest: every run goes through app.py, as in a browser.  AppTest resets Streamlit's
    legacy-pages flag before each run, and with a pages/ folder beside app.py it would then run
    the page alone; a real server leaves that mode once, for good (pages/_common.py)."""
    from streamlit.runtime.pages_manager import PagesManager

    real_init = PagesManager.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    monkeypatch.setattr(PagesManager, "__init__", init)
