"""TLS and flag helpers shared by the daemons that serve HTTPS (the apiserver and the agent).

    ctx = server_context(cert_file, key_file, client_ca_file)   # TLSConfigError: a one-line message

TLS 1.2+ only; on TLS 1.2 only ECDHE key exchange with AEAD ciphers (the CIS benchmark's strong set).
"""

from __future__ import annotations

import argparse
import os
import ssl

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


class TLSConfigError(Exception):
    """A certificate, key or CA file that cannot be used; the message names the flag and the file."""


def server_context(cert_file: str, key_file: str, client_ca_file: str = "", *,
                   session_tickets: bool = True) -> ssl.SSLContext:
    """A server context with the serving certificate (--tls-cert-file / --tls-private-key-file). With
    client_ca_file (--client-ca-file), client certificates are asked for and verified when given
    (CERT_OPTIONAL: a request without one may still carry a token, or get its 401).
    session_tickets=False: no TLS 1.3 tickets, i.e. nothing is written to a connection after the
    handshake behind a blocking reader's back (the agent's threaded server)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    if not session_tickets:
        ctx.num_tickets = 0
    for flag, path in (("--tls-cert-file", cert_file), ("--tls-private-key-file", key_file)):
        if not os.path.exists(path):  # ssl's FileNotFoundError does not say which file
            raise TLSConfigError(f"cannot load {flag}: {path} does not exist")
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as e:
        raise TLSConfigError(f"cannot load --tls-cert-file {cert_file} / --tls-private-key-file {key_file}: "
                             f"{e}") from None
    if client_ca_file:
        try:
            ctx.load_verify_locations(cafile=client_ca_file)
        except FileNotFoundError:
            raise TLSConfigError(f"cannot load --client-ca-file: {client_ca_file} does not exist") from None
        except (OSError, ssl.SSLError) as e:
            raise TLSConfigError(f"cannot load --client-ca-file {client_ca_file}: {e}") from None
        ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def bool_flag(text: str) -> bool:
    """argparse type for upstream-style boolean flags (--anonymous-auth=false, --profiling=true)."""
    v = text.strip().lower()
    if v in ("true", "1", "yes"):
        return True
    if v in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")
