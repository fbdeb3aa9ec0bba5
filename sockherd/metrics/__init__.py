"""What Prometheus reads.  Empty until the metrics issue; the servers already keep the raw
figures it will export: `ForkingMixIn.child_exit_counts` and the accept failure counts."""
