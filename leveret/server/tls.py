"""TLS for the AMQP and HTTP listeners: the server's SSL context and what a TLS peer tells about itself.

- :func:`server_context` builds the one ``ssl.SSLContext`` both AMQPS and HTTPS listeners use from the
  ``tls_*`` settings (RabbitMQ's ``ssl_options``: certificate, key, CA, ``verify``, ``fail_if_no_peer_cert``,
  minimum version), checking the files first so that a bad file is one line naming the setting and the file.
- :func:`peer_tls` reads a connected transport's TLS session: protocol, cipher, and the verified client
  certificate's subject, issuer, validity and the user name the EXTERNAL mechanism logs in with
  (RabbitMQ's ``ssl_cert_login_from``: the subject's distinguished name or its common name).

The formatting follows RabbitMQ (``rabbit_cert_info``): a distinguished name is written RFC 4514 style, most
specific part first (``CN=client,O=Example,C=DE``), with RabbitMQ's attribute names and escapes, so that user
names made for RabbitMQ work unchanged.
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
import time
from typing import Any

from leveret.config import Config, ConfigError

# Python's (OpenSSL's long) attribute names -> the names RabbitMQ writes in a distinguished name.
_ATTRIBUTE_NAMES = {
    "surname": "SN",
    "givenName": "GIVENNAME",
    "initials": "INITIALS",
    "generationQualifier": "GENERATIONQUALIFIER",
    "commonName": "CN",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "title": "TITLE",
    "countryName": "C",
    "serialNumber": "SERIALNUMBER",
    "pseudonym": "PSEUDONYM",
    "domainComponent": "DC",
    "emailAddress": "EMAILADDRESS",
    "streetAddress": "STREET",
    "userId": "UID",
}
log = logging.getLogger("leveret.tls")
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_HANDSHAKE_TIMEOUT = 10.0


def server_context(config: Config) -> ssl.SSLContext | None:
    """The listeners' SSL context from ``config``'s ``tls_*`` settings, or ``None`` when TLS is off.

    Raises :class:`ConfigError` (one line naming the setting and the file) for a missing or unreadable file,
    a file that is not PEM, a key that does not belong to the certificate or cannot be decrypted."""
    if not config.tls:
        return None
    cert_text = _read("tls_cert_file", config.tls_cert_file)
    if "-----BEGIN CERTIFICATE-----" not in cert_text:
        raise ConfigError(f"tls_cert_file {config.tls_cert_file}: no PEM certificate in the file")
    key_text = _read("tls_key_file", config.tls_key_file)
    if "PRIVATE KEY-----" not in key_text:
        raise ConfigError(f"tls_key_file {config.tls_key_file}: no PEM private key in the file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[config.tls_min_version]
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    if hasattr(ssl, "OP_NO_RENEGOTIATION"):
        context.options |= ssl.OP_NO_RENEGOTIATION
    try:
        # the password is always given, so that an encrypted key never makes OpenSSL prompt on the terminal
        context.load_cert_chain(config.tls_cert_file, config.tls_key_file, password=config.tls_key_password)
    except ssl.SSLError as exc:
        raise ConfigError(_key_error(config, exc, encrypted="ENCRYPTED" in key_text)) from None
    except OSError as exc:
        raise ConfigError(f"tls_cert_file {config.tls_cert_file}: {exc.strerror or exc}") from None
    if config.tls_ca_file:
        _read("tls_ca_file", config.tls_ca_file)
        try:
            context.load_verify_locations(cafile=config.tls_ca_file)
        except ssl.SSLError as exc:
            raise ConfigError(f"tls_ca_file {config.tls_ca_file}: cannot load CA certificates "
                              f"({exc.reason or exc})") from None
        except OSError as exc:
            raise ConfigError(f"tls_ca_file {config.tls_ca_file}: {exc.strerror or exc}") from None
    if config.tls_verify == "peer":
        context.verify_mode = ssl.CERT_REQUIRED if config.tls_fail_if_no_peer_cert else ssl.CERT_OPTIONAL
    else:
        context.verify_mode = ssl.CERT_NONE
    context.sslobject_class = _LoggedSSLObject  # a failed handshake is logged (the event loop drops it silently)
    return context


def handshake_timeout() -> float:
    """Seconds a client has to finish the TLS handshake."""
    return _HANDSHAKE_TIMEOUT


def _read(setting: str, path: str) -> str:
    try:
        with open(path, "rb") as file:
            return file.read().decode("ascii", "replace")
    except OSError as exc:
        raise ConfigError(f"cannot read {setting} {path}: {exc.strerror or exc}") from None


def _key_error(config: Config, exc: ssl.SSLError, encrypted: bool) -> str:
    reason = exc.reason or ""
    if reason == "KEY_VALUES_MISMATCH":
        return (f"tls_key_file {config.tls_key_file} does not match the certificate in tls_cert_file "
                f"{config.tls_cert_file}")
    if encrypted:  # OpenSSL says "PEM lib" for a wrong or missing password
        return f"tls_key_file {config.tls_key_file}: cannot decrypt the key (wrong or missing tls_key_password)"
    return (f"cannot load tls_cert_file {config.tls_cert_file} with tls_key_file {config.tls_key_file}: "
            f"{reason or exc}")


# --- failed handshakes -----------------------------------------------------------------------------------


class _LoggedSSLObject(ssl.SSLObject):
    """The listeners' TLS objects (``SSLContext.sslobject_class``): as the standard one, but a handshake that
    fails is logged with its reason, which is what tells an operator why a client could not connect."""

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as exc:
            log.warning("TLS handshake failed: %s", describe_handshake_error(exc))
            raise


_HANDSHAKE_HINTS = {
    "HTTP_REQUEST": "the client sent plain HTTP, not TLS",
    "WRONG_VERSION_NUMBER": "the client does not speak TLS (a plain client on the TLS port?)",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the client sent no certificate (tls_fail_if_no_peer_cert is true)",
    "CERTIFICATE_VERIFY_FAILED": "the client's certificate does not chain to a CA in tls_ca_file",
    "TLSV1_ALERT_UNKNOWN_CA": "the client does not trust the server's certificate (unknown CA)",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the client refused the server's certificate",
    "UNSUPPORTED_PROTOCOL": "the client offers only TLS versions below tls_min_version",
    "NO_SHARED_CIPHER": "no cipher suite in common with the client",
}


def describe_handshake_error(exc: ssl.SSLError) -> str:
    """One line for a failed TLS handshake: a hint where OpenSSL's reason is a common one, then the reason."""
    reason = exc.reason or ""
    hint = _HANDSHAKE_HINTS.get(reason)
    if hint:
        return f"{hint} ({reason})"
    return str(exc.args[1] if len(exc.args) > 1 else exc) or type(exc).__name__


# --- the peer --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PeerTLS:
    """One TLS connection as the broker reports it. ``login`` is the EXTERNAL user name: set only when the
    client presented a certificate that was verified against ``tls_ca_file``."""

    protocol: str
    cipher_suite: str
    key_exchange: str
    cipher: str
    hash: str
    subject: str | None = None
    issuer: str | None = None
    validity: str | None = None
    login: str | None = None

    def details(self) -> dict[str, Any]:
        """The TLS fields of a RabbitMQ management API connection object."""
        return {"ssl": True, "ssl_protocol": self.protocol, "ssl_key_exchange": self.key_exchange,
                "ssl_cipher": self.cipher, "ssl_hash": self.hash, "peer_cert_subject": self.subject,
                "peer_cert_issuer": self.issuer, "peer_cert_validity": self.validity}


# What a connection object says when it is not TLS (RabbitMQ's nulls).
PLAIN_DETAILS: dict[str, Any] = {"ssl": False, "ssl_protocol": None, "ssl_key_exchange": None, "ssl_cipher": None,
                                 "ssl_hash": None, "peer_cert_subject": None, "peer_cert_issuer": None,
                                 "peer_cert_validity": None}


def peer_tls(ssl_object: ssl.SSLObject | ssl.SSLSocket | None, login_from: str | None) -> PeerTLS | None:
    """The TLS session of a connected transport (``transport.get_extra_info("ssl_object")``); ``None`` for a
    plain connection. ``login_from`` None: no EXTERNAL login from the certificate (``tls_external_login`` off)."""
    if ssl_object is None:
        return None
    name, protocol, _bits = ssl_object.cipher() or ("", ssl_object.version() or "", 0)
    key_exchange, cipher, mac = cipher_parts(name)
    cert = ssl_object.getpeercert()  # a dict only for a certificate that was verified
    if not cert:
        return PeerTLS(protocol.lower(), name, key_exchange, cipher, mac)
    return PeerTLS(protocol.lower(), name, key_exchange, cipher, mac, subject=format_dn(cert.get("subject", ())),
                   issuer=format_dn(cert.get("issuer", ())), validity=_validity(cert),
                   login=cert_login(cert, login_from) if login_from is not None else None)


def cert_login(cert: dict[str, Any], login_from: str) -> str | None:
    """The user name a verified certificate (``getpeercert()``'s dict) logs in as: the subject's distinguished
    name, or its common name (several are joined with ",", as RabbitMQ does); ``None`` if it has none."""
    subject = cert.get("subject", ())
    if login_from == "common_name":
        names = [value for rdn in subject for key, value in rdn if key == "commonName"]
        return ",".join(names) if names else None
    return format_dn(subject) or None


def format_dn(rdns: Any) -> str:
    """A name in ``getpeercert()``'s form (a tuple of RDNs, each a tuple of (attribute, value) pairs) written as
    RabbitMQ writes it: RFC 4514 order (the last RDN first), "," between RDNs, "+" inside a multi-valued one."""
    return ",".join("+".join(f"{_ATTRIBUTE_NAMES.get(key, key)}={_escape(value)}" for key, value in rdn)
                    for rdn in reversed(rdns))


def _escape(value: str) -> str:
    """RFC 4514 escapes, as RabbitMQ applies them: a leading space or '#', a trailing space, the specials
    ``" + , ; < > \\`` and, as \\XX per UTF-8 byte, control and non-ASCII characters (and '~')."""
    out: list[str] = []
    data = value.encode("utf-8")
    last = len(data) - 1
    for index, byte in enumerate(data):
        char = chr(byte)
        leading = index == 0 and char in " #"
        trailing = index == last and index > 0 and char == " "
        if leading or trailing or char in '"+,;<>\\':
            out.append("\\" + char)
        elif byte < 32 or byte >= 126:
            out.append(f"\\{byte:02X}")
        else:
            out.append(char)
    return "".join(out)


def _validity(cert: dict[str, Any]) -> str | None:
    try:
        start = ssl.cert_time_to_seconds(cert["notBefore"])
        end = ssl.cert_time_to_seconds(cert["notAfter"])
    except (KeyError, ValueError):
        return None
    iso = "%Y-%m-%dT%H:%M:%SZ"
    return f"{time.strftime(iso, time.gmtime(start))} - {time.strftime(iso, time.gmtime(end))}"


_CIPHER_WORDS = ("AES", "CHACHA20", "CAMELLIA", "ARIA", "DES", "3DES", "SEED", "IDEA", "RC4", "NULL")


def cipher_parts(name: str) -> tuple[str, str, str]:
    """An OpenSSL cipher suite name as RabbitMQ (Erlang) names its parts: (key exchange, cipher, hash).

    ``TLS_AES_256_GCM_SHA384`` (TLS 1.3) -> ``("any", "aes_256_gcm", "aead")``;
    ``ECDHE-RSA-AES128-SHA256`` -> ``("ecdhe_rsa", "aes_128_cbc", "sha256")``."""
    if name.startswith("TLS_"):  # TLS 1.3: the key exchange is not part of the suite
        words = name[4:].split("_")
        mac_index = len(words) - 1
        cipher = "_".join(words[:mac_index]).lower()
        return "any", cipher, "aead"
    words = name.split("-")
    split = next((i for i, word in enumerate(words) if word.startswith(_CIPHER_WORDS)), len(words))
    key_exchange = "_".join(words[:split]).lower() or "rsa"
    rest = words[split:]
    if not rest:
        return key_exchange, "", ""
    head = rest[0]
    aead = any(word in ("GCM", "CCM", "CCM8", "POLY1305") for word in rest)
    if head.startswith("AES") or head.startswith("CAMELLIA") or head.startswith("ARIA"):
        family = next(prefix for prefix in ("AES", "CAMELLIA", "ARIA") if head.startswith(prefix))
        size = head[len(family):] or "128"
        mode = next((word.lower() for word in rest[1:] if word in ("GCM", "CCM", "CCM8")), "cbc")
        cipher = f"{family.lower()}_{size}_{mode}"
    elif head == "CHACHA20":
        cipher = "chacha20_poly1305"
    else:
        cipher = head.lower()
    mac = "aead" if aead else (rest[-1].lower() if len(rest) > 1 else "")
    return key_exchange, cipher, mac
