"""The sidecar proxy program: loads a bootstrap, runs listeners and the admin server, drains."""
