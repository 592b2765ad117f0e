"""Platform integrations (local launcher, Kubernetes); arrive with later issues."""
