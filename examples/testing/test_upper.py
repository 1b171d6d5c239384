"""A user's tests of a protocol and a timeout, on every asycamore backend.

Run them with ``pytest examples/testing`` (add ``--asycamore-backend poll`` for one
backend): the ``service``, ``asycamore_backend`` and ``mock_clock`` fixtures come from
the pytest plugin asycamore installs.
"""

import contextlib
import socket

from asycamore.servicemodel import Protocol


class Upper(Protocol):
    def data_received(self, data):
        self.transport.write(data.upper())


def exchange(service, client, data):
    """Send *data*, then run the service until the reply is as long."""
    client.sendall(data)
    client.setblocking(False)
    reply = b""
    while len(reply) < len(data):
        service.run_once(0.05)  # the test drives the loop, one round at a time
        with contextlib.suppress(BlockingIOError):
            reply += client.recv(len(data))
    return reply


def test_upper(service):
    listener = service.listen_tcp(Upper, "127.0.0.1", 0)
    with socket.create_connection(listener.address) as client:
        assert exchange(service, client, b"hello") == b"HELLO"
    listener.close()


def test_quiet_clients_are_dropped(service, mock_clock):
    listener = service.listen_tcp(Upper, "127.0.0.1", 0, idle_timeout=30)
    with socket.create_connection(listener.address) as client:
        while not service.transports.streams:
            service.run_once(0.05)
        mock_clock.advance(29.9)
        service.run_once(0)
        assert service.transports.streams  # not idle for long enough yet
        mock_clock.advance(0.1)
        service.run_once(0)  # the idle check runs: the connection is closed
        assert client.recv(1) == b""
    listener.close()


def test_a_day_in_a_millisecond(service, mock_clock):
    mock_clock.autojump_threshold = 0
    service.call_later(86_400, service.stop)
    service.serve_forever()
    assert service.time() == 86_400.0
