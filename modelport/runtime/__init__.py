"""The service runtime shared by every modelport service: settings, server bootstrap,
health/reflection, error mapping, metrics, auth/TLS, the Artifacts service and job plumbing."""
