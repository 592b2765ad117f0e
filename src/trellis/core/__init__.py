"""Sans-IO decisions: routing, balancing, retries, limits, metrics. No sockets, no event loop."""
