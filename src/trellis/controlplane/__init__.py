"""The control plane program (config store, xDS server, CA); arrives with issue 3."""
