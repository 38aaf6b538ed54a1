"""modelport: convert, optimize and serve TensorFlow/Keras models over gRPC.

The shared package holds the generated protocol (``modelport.v1``, ``modelport.kserve.v2``),
the service runtime, the artifact store, the Python client SDK and the gateway CLI.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "Client"]


def __getattr__(name: str):
    # The SDK pulls in grpc; keep `import modelport` cheap for domain code.
    if name == "Client":
        from modelport.client import Client

        return Client
    raise AttributeError(name)
