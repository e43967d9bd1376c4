"""Fail early, in one line, when a port the stack needs is taken."""

import socket
from collections.abc import Mapping


class PortInUseError(RuntimeError):
    pass


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR so a socket lingering in TIME_WAIT does not count as "in use".
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def check_ports_free(ports: Mapping[int, str]) -> None:
    """`ports` maps a port to what to do when it is taken, e.g.
    {7233: "stop the other Temporal server or set OPPFLOW_TEMPORAL_PORT"}."""
    for port, advice in ports.items():
        if not port_is_free(port):
            raise PortInUseError(f"port {port} is in use: {advice}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
