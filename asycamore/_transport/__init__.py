"""The socket transports behind :mod:`asycamore.tcpsocket` (and their shared base).

One module per concern, in the manner of Twisted's ``internet/``:

- :mod:`.base`: what every socket transport shares -- the lifecycle, the defaults,
  the water marks and the flow-control calls to the handler, the common properties.
- :mod:`.options`: :class:`~.options.TransportOptions`, the settings as one checked
  value, and the keyword sets that build it.
- :mod:`.resolve` and :mod:`.binding`: names, and sockets on every address of one.
- :mod:`.writing`, :mod:`.connecting` and :mod:`.stream`: a connected stream socket
  (TCP or Unix) -- its sending side, its client connect, and
  :class:`~.stream.Connection` with its read/EOF/close state machine.
- :mod:`.connect`: client connects.
- :mod:`.listener`: listening sockets and :class:`~.listener.Listener`.
- :mod:`.datagram`: :class:`~.datagram.DatagramEndpoint`, UDP.
- :mod:`.tls`: :class:`~.tls.TLSConnection`, TLS layered on a connection (the plain
  connection's handler, and its protocol's transport).

The package is private: users import from :mod:`asycamore.tcpsocket`.  Its modules
talk to each other only through the names they export (no ``_private`` reach-ins).
"""
