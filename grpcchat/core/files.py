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


def read_tls_files(cert: str, key: str, client_ca: str = "") -> tuple[bytes, bytes, bytes | None]:
    """What a TLS server reads (chain, key, client CA or None), each checked as PEM and the
    pair as belonging together, or a ConfigError naming the file: for `serve` and for
    `--check-config` alike."""
    chain, private_key = read_pem(cert, "TLS certificate"), read_pem(key, "TLS key")
    ca = read_pem(client_ca, "client CA") if client_ca else None
    check_tls_files(cert, key, client_ca)
    return chain, private_key, ca


def check_tls_files(cert: str, key: str, client_ca: str = "") -> None:
    """A ConfigError unless the certificate chain and key load and belong together (and the
    client CA, if any, loads): gRPC, given a key of another certificate, fails as if the
    address were in use."""
    _check_tls_files(cert, key, client_ca, server=True)


def check_client_tls_files(cert: str, key: str, ca: str) -> None:
    """The same for a client's files (each optional): gRPC, given a key of another
    certificate or a CA file that is no certificate, fails every call as if the server could
    not be reached, and retries."""
    _check_tls_files(cert, key, ca, server=False)


def _check_tls_files(cert: str, key: str, ca: str, *, server: bool) -> None:
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ca_is = "client CA" if server else "CA file"
    if cert or key:
        try:
            # An encrypted key gets no password (gRPC takes none): refused, never prompted for.
            context.load_cert_chain(cert, key or None, password=lambda: b"")
        except (ssl.SSLError, OSError) as error:
            if _encrypted(key or cert):
                raise ConfigError(
                    f"the TLS key {key or cert} is encrypted (it needs a passphrase), which "
                    f"gRPC cannot take: decrypt it, e.g. `openssl pkey -in {key or cert} "
                    "-out plain.key`, and keep that file private"
                ) from None
            raise ConfigError(
                f"the TLS certificate {cert} and key {key} do not load as a pair "
                f"({_why(error)}): is the key the certificate's?"
            ) from None
    if ca:
        try:
            context.load_verify_locations(ca)
        except (ssl.SSLError, OSError) as error:
            raise ConfigError(f"the {ca_is} {ca} does not load ({_why(error)})") from None


def _encrypted(path: str) -> bool:
    """Whether the PEM file at `path` holds an encrypted private key (PKCS#8's own header, or
    the traditional one's `Proc-Type: 4,ENCRYPTED`)."""
    try:
        with open(path, "rb") as pem:
            head = pem.read(64 * 1024)
    except OSError:
        return False
    return b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in head or b"Proc-Type: 4,ENCRYPTED" in head


def _why(error: OSError) -> str:
    """An SSLError's reason ("KEY_VALUES_MISMATCH"), else the OS's words."""
    return str(getattr(error, "reason", None) or error.strerror or error)
