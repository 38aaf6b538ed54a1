"""modelport optimizer service."""
