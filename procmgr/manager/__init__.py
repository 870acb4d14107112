"""The process manager: one single-threaded process that owns the domain
table and talks to clients and workers only through rings.

    core/        the C core (extension procmgr.manager._core): the table and
                 its state machine, peers and outboxes, the handlers, the
                 pending-client strategies, the loop's ring work
                 (core/README.md maps the files)
    manager.py   Manager: the Python around the core (bindings, the requests
                 answered in Python, read-only views)
    handlers.py  the requests answered in Python (add_spawnd, status,
                 domain list, stats)
    pending.py   choosing a pending-client strategy
    domain.py    the domain state machine, drawn, and the table's views
    channel.py   one peer's ring pair and its decoder
    loop.py      the event loop (sleep, serve in C, hand the rest to Python)
    server.py    the manager as a process: socket, handshakes, workers
"""
