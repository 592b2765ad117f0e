"""Validated user configuration (Istio kinds as pydantic models); grows with the control plane."""
