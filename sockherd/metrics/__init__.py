"""What Prometheus reads: request figures, the collector, the exposition and the endpoint.

Servers get a /metrics endpoint by setting `metrics_address` (see `endpoint`); nothing
here is imported until then, and prometheus_client only in its multiprocess mode.
"""
