"""The socketserver layer: CPython's `socketserver`, hook for hook, with a better loop.

BaseServer and the TCP/UDP/Unix servers, ForkingMixIn and ThreadingMixIn, the
predefined combinations and the request handlers; and what their loop stands on:
the wait on a self-pipe and wake sources (`loop_wait`, `wakeup`), the exit fd of
each forked child (`child_watch`), the accept back-off, the read deadline and the
request figures.

This layer knows nothing of supervision, pools or metrics.  The layers above
(`workers`, `metrics`, `supervisor`) reach it through the extension points that
`base_server` documents (wake sources, loop hooks, a shared loop), never through
private names.
"""
