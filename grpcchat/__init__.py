"""grpcchat: session-based real-time chat over gRPC."""

__version__ = "0.1.0"
