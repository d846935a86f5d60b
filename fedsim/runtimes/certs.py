"""TLS certificates and SuperNode keys for the deployment runtime, made with `cryptography`.

`python -m fedsim.runtimes.certs DIR --host NAME_OR_IP ...` writes a CA (ca.crt, ca.key), the SuperLink's
certificate (server.crt, server.key) with every given name and address as a SAN, and with
`--nodes N` one key pair per SuperNode (node_i, node_i.pub: OpenSSH-format ECDSA P-256, what
Flower's node authentication reads). Keys are written owner-readable only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedsim.system.errors import ConfigError

LOCALHOST = ("localhost", "127.0.0.1", "::1")


VALID_DAYS = 365


def _write(path: Path, data: bytes, private: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def make_ca(out: Path, name: str = "fedsim CA") -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA (ca.crt, ca.key) that signs the SuperLink's certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(out / "ca.crt", cert.public_bytes(serialization.Encoding.PEM))
    _write(out / "ca.key", _pem_key(key), private=True)
    return cert, key


def make_server_cert(
    out: Path, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], hosts: Sequence[str] = LOCALHOST
) -> Path:
    """server.crt/server.key for the SuperLink, signed by `ca`, valid for every name and address in `hosts`."""
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in dict.fromkeys(hosts)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(out / "server.key", _pem_key(key), private=True)
    return _write(out / "server.crt", cert.public_bytes(serialization.Encoding.PEM))


def make_node_key(out: Path, name: str) -> Path:
    """A SuperNode's key pair: `name` (OpenSSH private key) and `name.pub`, the public key to register."""
    key = ec.generate_private_key(ec.SECP256R1())
    _write(
        out / name,
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        ),
        private=True,
    )
    return _write(
        out / f"{name}.pub",
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n",
    )


def make_all(out: Path, hosts: Sequence[str] = LOCALHOST, num_nodes: int = 0) -> None:
    """A CA, a SuperLink certificate for `hosts`, and `num_nodes` SuperNode key pairs in `out`."""
    make_server_cert(out, make_ca(out), hosts)
    for i in range(num_nodes):
        make_node_key(out, f"node_{i}")


SERVER_FILES = ("ca.crt", "server.crt", "server.key")  # what a SuperLink reads from a certificates folder


def check_certificates(folder: Path, num_nodes: int, node_auth: bool) -> None:
    missing = [name for name in SERVER_FILES if not (folder / name).is_file()]
    if node_auth:
        missing += [f"node_{i}" for i in range(num_nodes) if not (folder / f"node_{i}").is_file()]
    if missing:
        raise ConfigError(
            "runtime.certificates",
            f"{folder} lacks {', '.join(missing[:4])}"
            f"{'...' if len(missing) > 4 else ''}; allowed: a folder made by `python -m fedsim.runtimes.certs "
            f"DIR --nodes {num_nodes}`, or null to make certificates for this run",
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fedsim.runtimes.certs", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for the certificates and keys")
    parser.add_argument(
        "--host",
        action="append",
        dest="hosts",
        metavar="NAME_OR_IP",
        help="a name or address the SuperNodes use to reach the SuperLink (repeat; default: localhost, 127.0.0.1, ::1)",
    )
    parser.add_argument("--nodes", type=int, default=0, help="SuperNode key pairs to make (node_0, node_0.pub, ...)")
    args = parser.parse_args(argv)
    make_all(args.out, args.hosts or LOCALHOST, args.nodes)
    print(f"wrote {args.out}/ca.crt, server.crt, server.key" + (f" and {args.nodes} node keys" if args.nodes else ""))


if __name__ == "__main__":
    main()
