"""SSL contexts for the listener and for outgoing C-STOREs, built only from configuration.

PS3.15 B.12 (BCP 195): TLS 1.2 minimum (1.3 preferred, OpenSSL negotiates it when both
sides can), client certificates required when ``require_client_certificate`` is set, peer
certificates checked against the configured CA bundle.
"""

from __future__ import annotations

import ssl

from medseg.errors import ConfigError
from medseg.server.config import TlsConfig

_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


def _load(context: ssl.SSLContext, config: TlsConfig, *, need_cert: bool) -> ssl.SSLContext:
    context.minimum_version = _VERSIONS[config.minimum_version]
    try:
        if config.certificate and (need_cert or config.private_key):
            context.load_cert_chain(config.certificate, config.private_key)
        if config.ca_certificates:
            context.load_verify_locations(cafile=config.ca_certificates)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"tls: cannot load certificate, key or CA: {exc}") from exc
    return context


def server_context(config: TlsConfig) -> ssl.SSLContext:
    """The listener's context: our certificate, and the CA that signs allowed clients."""
    context = _load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), config, need_cert=True)
    context.verify_mode = (
        ssl.CERT_REQUIRED if config.require_client_certificate else ssl.CERT_OPTIONAL
    )
    if not config.ca_certificates:
        context.verify_mode = ssl.CERT_NONE
    return context


def client_context(config: TlsConfig) -> ssl.SSLContext:
    """For sending to a TLS destination: verify it against our CA, present our certificate."""
    context = _load(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), config, need_cert=False)
    if not config.ca_certificates:
        context.load_default_certs()
    return context
