"""The metrics endpoint as a part of a serve loop: opened as the loop starts, closed as it ends.

`MetricsService` owns one `MetricsEndpoint`, the collector that reads the public
snapshot, and prometheus_client's multiprocess directory when that mode is on.
The supervisor's Arbiter drives one from its own loop hooks; a lone server (any
sockherd server with `metrics_address` set and no supervisor) gets one through
the loop extension that `sockherd/__init__.py` registers (`metrics_extension`).

Settings a server may carry (instance or class attributes; all default to None):
`metrics_address` (host, port), `metrics_name` (its `server` label),
`metrics_basic_auth` (user, password), `metrics_tls_certfile` and
`metrics_tls_keyfile` (see `endpoint_security`).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable

from ..server.base_server import BaseServer
from ..server.loop_hooks import LoopHooks
from .collector import SnapshotCollector
from .endpoint import MetricsEndpoint
from .endpoint_security import BasicAuth, tls_context
from .snapshot import SupervisorSnapshot, lone_server_snapshot
from .user_multiprocess import UserMetrics, multiprocess_directory

_services: weakref.WeakKeyDictionary[BaseServer, MetricsService] = weakref.WeakKeyDictionary()


def endpoint_of(server: BaseServer) -> MetricsEndpoint | None:
    """The metrics endpoint that the loop serving `server` runs now, or None."""
    service = _services.get(server)
    return service.endpoint if service is not None else None


def endpoint_address(server: BaseServer) -> tuple[str, int] | None:
    """The (host, port) the metrics endpoint of `server`'s loop listens on now, or None.

    Useful with `metrics_address = ("127.0.0.1", 0)`, which lets the kernel pick a port.
    """
    endpoint = endpoint_of(server)
    return endpoint.address if endpoint is not None else None


class MetricsService(LoopHooks):
    """Serves /metrics for the servers of one loop, read from `source()` at each scrape.

    Construction checks the settings (a bad certificate or credentials raise here,
    before anything is bound); `open()` binds the endpoint on the loop of `server`.
    """

    def __init__(
        self,
        address: tuple[str, int],
        source: Callable[[], SupervisorSnapshot],
        *,
        basic_auth: tuple[str, str] | None = None,
        tls_certfile: str | None = None,
        tls_keyfile: str | None = None,
    ) -> None:
        self.address = address
        self.source = source
        self._tls = tls_context(tls_certfile, tls_keyfile)
        self._auth = BasicAuth(basic_auth) if basic_auth is not None else None
        self.endpoint: MetricsEndpoint | None = None
        self.user_metrics: UserMetrics | None = None
        self.keep_user_files = False  # after an in-place upgrade: live workers' files stay

    @classmethod
    def settings_of(
        cls, server: BaseServer, source: Callable[[], SupervisorSnapshot]
    ) -> MetricsService | None:
        """A service for the metrics settings `server` carries; None without metrics_address."""
        address = getattr(server, "metrics_address", None)
        if address is None:
            return None
        return cls(
            address,
            source,
            basic_auth=getattr(server, "metrics_basic_auth", None),
            tls_certfile=getattr(server, "metrics_tls_certfile", None),
            tls_keyfile=getattr(server, "metrics_tls_keyfile", None),
        )

    def accept_errors(self) -> dict[str, int]:
        """Failed accepts of the endpoint's own listener, by errno name."""
        return dict(self.endpoint.accept_backoff.failures) if self.endpoint is not None else {}

    # --- the loop hooks ---------------------------------------------------------------

    def loop_started(self, server: BaseServer) -> None:
        """Bind the endpoint and watch it from `server`'s loop."""
        collectors: list[object] = [SnapshotCollector(self.source)]
        directory = multiprocess_directory()
        if directory:
            self.user_metrics = UserMetrics(directory, keep_files=self.keep_user_files)
            collectors.append(self.user_metrics)
        self.endpoint = MetricsEndpoint(
            self.address,
            collectors,
            server.add_wake_source,
            server.remove_wake_source,
            tls=self._tls,
            basic_auth=self._auth,
        )
        for member in server.loop_members:
            _services[member] = self

    def after_iteration(self, server: BaseServer) -> None:
        """Drop scrapers past their deadline."""
        if self.endpoint is not None:
            self.endpoint.expire_slow_clients()

    def loop_ending(self, server: BaseServer) -> None:
        """Close the endpoint and the multiprocess archives."""
        endpoint, self.endpoint = self.endpoint, None
        if endpoint is not None:
            endpoint.close()
        user_metrics, self.user_metrics = self.user_metrics, None
        if user_metrics is not None:
            user_metrics.close()
        for member in server.loop_members:
            _services.pop(member, None)

    def in_forked_child(self, server: BaseServer) -> None:
        """A child must not hold the endpoint's sockets."""
        endpoint, self.endpoint = self.endpoint, None
        if endpoint is not None:
            endpoint.close_in_child()
        self.user_metrics = None

    def child_reaped(self, server: BaseServer, pid: int) -> None:
        """Fold a dead child's prometheus_client multiprocess files."""
        if self.user_metrics is not None:
            self.user_metrics.child_exited(pid)


def metrics_extension(server: BaseServer) -> MetricsService | None:
    """The loop extension for a server without a supervisor: metrics if it asks for them."""
    started = time.monotonic()
    service: MetricsService | None = None

    def source() -> SupervisorSnapshot:
        extra = service.accept_errors() if service is not None else {}
        return lone_server_snapshot(server, started, extra)

    service = MetricsService.settings_of(server, source)
    return service
