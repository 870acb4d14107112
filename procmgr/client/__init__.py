"""The user's side of the runtime: starting or finding a runtime
(runtime.py), the client binding with its requests, answers and results
(client.py), and the output a domain wrote (logs.py). A client speaks to
the manager only through its ring pair, in protocol messages."""
