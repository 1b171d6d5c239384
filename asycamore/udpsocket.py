"""Dispatch targets for UDP: bound and connected datagram endpoints.

- :class:`DatagramEndpoint` moves datagrams between a UDP socket and a *handler* (any
  object with the :class:`DatagramHandler` callbacks): batched ``recvfrom_into`` reads
  into a shared buffer large enough for any datagram, a bounded send queue with the
  same water marks and ``pause_writing``/``resume_writing`` calls as a stream
  :class:`~asycamore.tcpsocket.Connection`, :meth:`~DatagramEndpoint.close` (flushes the
  queue) and :meth:`~DatagramEndpoint.abort`.
- :func:`bind_udp` makes a bound endpoint (talks to anyone), :func:`bind_udp_all` one
  per address of a name, :func:`connect_udp` a connected one (one peer, whose ICMP
  errors reach ``handler.error_received``), each with a protocol from the
  ``protocol_factory`` they are given; :func:`create_datagram_socket` and
  :func:`create_datagram_sockets` make the bound sockets alone.
- Errors: a datagram over the family's maximum payload raises
  :class:`DatagramTooLarge` from :meth:`~DatagramEndpoint.sendto`; errors the kernel
  reports for a datagram (``ECONNREFUSED`` after an ICMP port unreachable,
  ``EMSGSIZE``, ``EACCES`` for a broadcast without ``allow_broadcast``) go to
  ``handler.error_received`` and the endpoint stays open.

:class:`asycamore.servicemodel.Service` has the same three functions as methods, and
:class:`asycamore.servicemodel.DatagramProtocol` is a base class for handlers.  See
:doc:`/udp` for a walk-through.  This module is the public face of
``asycamore._transport.datagram``.  Everything here is single-threaded: call an
endpoint's methods only from the thread that runs its dispatch context.
"""

from __future__ import annotations

from ._transport.datagram import (
    MAX_DATAGRAM_SIZE,
    MAX_PAYLOAD_IPV4,
    MAX_PAYLOAD_IPV6,
    DatagramEndpoint,
    DatagramHandler,
    DatagramKeywords,
    DatagramSocketKeywords,
    DatagramTooLarge,
    bind_udp,
    bind_udp_all,
    connect_udp,
    create_datagram_socket,
    create_datagram_sockets,
)

__all__ = [
    "MAX_DATAGRAM_SIZE",
    "MAX_PAYLOAD_IPV4",
    "MAX_PAYLOAD_IPV6",
    "DatagramEndpoint",
    "DatagramHandler",
    "DatagramKeywords",
    "DatagramSocketKeywords",
    "DatagramTooLarge",
    "bind_udp",
    "bind_udp_all",
    "connect_udp",
    "create_datagram_socket",
    "create_datagram_sockets",
]
