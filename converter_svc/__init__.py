"""modelport converter service."""
