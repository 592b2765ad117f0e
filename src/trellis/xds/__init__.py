"""Pure translation between Envoy xDS v3 messages and the proxy's compiled config."""
