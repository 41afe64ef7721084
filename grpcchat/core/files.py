"""Reading the local files a configuration names (certificates, keys), with errors that name
the file and say what it was for."""

from __future__ import annotations

from pathlib import Path

from grpcchat.core.errors import ConfigError


def read_pem(path: str, what: str) -> bytes:
    """The bytes of a certificate or key file, or a ConfigError naming it: gRPC takes PEM
    only, and given anything else it fails later with a misleading error (an address in use,
    a server unreachable)."""
    try:
        pem = Path(path).read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read the {what} {path}: {error.strerror}") from None
    if b"-----BEGIN " not in pem:
        raise ConfigError(f"the {what} {path} is not PEM (no -----BEGIN line)")
    return pem
