"""The socket transports behind :mod:`asycamore.tcpsocket` (and their shared base).

One module per concern, in the manner of Twisted's ``internet/``:

- :mod:`.base`: what every socket transport shares -- the defaults, the water marks
  and the flow-control calls to the handler, the common properties.
- :mod:`.stream`: :class:`~.stream.Connection`, a connected stream socket (TCP or
  Unix) and its read/write/EOF state machine.
- :mod:`.connect`: client connects.
- :mod:`.listener`: listening sockets and :class:`~.listener.Listener`.
- :mod:`.tls`: :class:`~.tls.TLSConnection`, TLS layered on a connection (the plain
  connection's handler, and its protocol's transport).

The package is private: users import from :mod:`asycamore.tcpsocket`.  Its modules
talk to each other only through the names they export (no ``_private`` reach-ins).
"""
