"""TLS for the bus, as an option: a certificate authority and a server certificate of one's own.

`splice up --tls` makes them in its state directory (with the `openssl` command) and runs its
nats-server with `tls { … }`. Clients trust the authority through `SSL_CERT_FILE`, which every
Python client here honours (nats-py takes `ssl.create_default_context()` when the server asks
for TLS); other clients take `ca.pem` as their CA file.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

CA_FILE = "ca.pem"


@dataclass(frozen=True)
class TlsFiles:
    ca: Path  # what clients trust
    cert: Path  # the server's certificate and key
    key: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def self_signed(directory: Path, names: tuple[str, ...] = ("127.0.0.1", "localhost")) -> TlsFiles:
    """An authority and a server certificate for `names` in `directory`; kept when present."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    files = TlsFiles(directory / CA_FILE, directory / "server.pem", directory / "server.key")
    if files.ca.exists() and files.cert.exists() and files.key.exists():
        return files
    ca_key = directory / "ca.key"
    curve = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    _openssl("req", "-x509", *curve, "-keyout", str(ca_key), "-out", str(files.ca),
             "-days", "3650", "-subj", "/CN=Splice bus CA")
    san = ",".join(f"IP:{n}" if n.replace(".", "").isdigit() else f"DNS:{n}" for n in names)
    with tempfile.TemporaryDirectory() as tmp:
        csr, ext = Path(tmp) / "server.csr", Path(tmp) / "ext.cnf"
        ext.write_text(
            f"subjectAltName={san}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n"
            "extendedKeyUsage=serverAuth\nauthorityKeyIdentifier=keyid\n"
        )
        _openssl("req", *curve, "-keyout", str(files.key), "-out", str(csr),
                 "-subj", "/CN=splice-nats")
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(files.ca), "-CAkey", str(ca_key),
                 "-CAcreateserial", "-out", str(files.cert), "-days", "825",
                 "-extfile", str(ext))
    for f in (ca_key, files.key):
        f.chmod(0o600)
    return files
