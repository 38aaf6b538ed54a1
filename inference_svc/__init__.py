"""modelport inference service."""
