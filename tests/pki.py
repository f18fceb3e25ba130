"""Certificates for tests: a throwaway CA per test (trustme), files written to its directory.
Never a committed key."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path

import trustme


@dataclass
class PKI:
    """A CA and the certificates a test issues from it, as PEM files under ``dir``."""

    dir: Path
    ca: trustme.CA = field(default_factory=trustme.CA)

    def __post_init__(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca.cert_pem.write_to_path(str(self.ca_file))

    @property
    def ca_file(self) -> Path:
        return self.dir / "ca.pem"

    def issue(self, name: str, *identities: str, common_name: str | None = None
              ) -> tuple[Path, Path]:
        """(certificate chain file, key file) of a new certificate for ``identities`` (host
        names or IPs; none: a client certificate of ``common_name`` alone), written to
        ``name.crt`` / ``name.key`` (replacing them: a renewal)."""
        leaf = self.ca.issue_cert(*identities, common_name=common_name)
        cert, key = self.dir / f"{name}.crt", self.dir / f"{name}.key"
        cert.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(key))
        key.chmod(0o600)
        return cert, key

    def client_context(self, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
        """A client context trusting this CA, presenting ``cert`` if given."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        if cert is not None:
            ctx.load_cert_chain(str(cert[0]), str(cert[1]))
        return ctx
