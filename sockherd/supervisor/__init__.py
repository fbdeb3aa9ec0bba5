"""The parent process: the Arbiter and its parts.

Signals, the child table and its one reaper, the worker pools, the autoscaler,
the control socket, inherited listening sockets and serving several listeners
from one loop.  Stands on `server`, `workers` and `metrics`.
"""
