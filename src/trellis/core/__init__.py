"""Sans-IO decisions: routing, load balancing, retries, limits, metrics. No sockets, no event loop."""
