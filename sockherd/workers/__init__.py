"""The child side of a prefork pool: the worker loop and its bootstrap, the scoreboard
shared with the supervisor, the worker lifecycle table and fd passing.

Stands on `server` only.
"""
