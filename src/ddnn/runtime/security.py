"""A locked-down broker: one password per device, edge and server, an ACL that keeps each device
to its own topics, TLS, and the per-identity access files the tiers connect with.

A smart-home deployment carries private sensor data, so `ddnn broker --secure DIR` and
`ddnn run --secure` generate all of it; `docs/security.md` gives the threat model. The ACL is
derived from the topic layout in `protocol` (requests `dd/q/<model>/<section>/<device>`, edge
requests under `dd/e`, replies `dd/a/<device>`, live rollouts under `dd/c` and `dd/f`), so a
device's MQTT username must be its device id. Only an operator identity may publish deploy and
rollback commands.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ddnn.errors import DdnnError
from ddnn.runtime.fields import check_identifier
from ddnn.runtime.protocol import (
    EDGE_IDENTITY,
    EDGE_PREFIX,
    OPERATOR_IDENTITY,
    SERVER_IDENTITY,
    control_root,
    fetch_root,
    replies_root,
    requests_root,
)

log = logging.getLogger(__name__)

ROLES = ("device", "edge", "server", "operator")
_CERT_DAYS = 825
_RENEW_DAYS = 30  # a certificate with fewer days left is renewed (ours) or warned about


@dataclass(frozen=True)
class BrokerAccess:
    """How one identity reaches the broker: what `--auth FILE` holds (JSON, mode 0600)."""

    url: str
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None  # trust anchor for the broker's certificate (mqtts://)
    cert_file: str | None = None  # optional client certificate
    key_file: str | None = None
    # servers only: the shared-subscription group. Secret, because Mosquitto hands a group's
    # messages round-robin to every member and drops those a member may not read: a device
    # that joined a guessable group would make the broker drop other devices' requests.
    share_group: str | None = None

    @classmethod
    def load(cls, path: str | Path) -> BrokerAccess:
        """Read an access file; relative certificate paths are relative to the file, and must
        exist."""
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            raise DdnnError(
                f"access file {path} does not exist; `ddnn broker --secure DIR` writes one "
                "per identity under DIR/access/"
            ) from None
        except (OSError, ValueError) as exc:
            raise DdnnError(f"access file {path} is not readable JSON: {exc}") from None
        known = set(cls.__dataclass_fields__)
        if not isinstance(doc, dict) or "url" not in doc or set(doc) - known:
            got = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
            raise DdnnError(
                f"access file {path} must be a JSON object with 'url' and optionally "
                f"{sorted(known - {'url'})}; got {got}"
            )
        if path.stat().st_mode & 0o077 and doc.get("password"):
            log.warning("%s holds a password and is readable by others: chmod 600 it", path)
        for key in ("ca_file", "cert_file", "key_file"):
            if doc.get(key):
                doc[key] = str((path.parent / doc[key]).resolve())
                if not Path(doc[key]).is_file():
                    raise DdnnError(
                        f"{path}: {key} {doc[key]} does not exist; copy it beside the access "
                        "file (`ddnn broker --secure` writes access/ca.crt)"
                    )
        return cls(**doc)

    def save(self, path: str | Path) -> None:
        """Write with mode 0600: the file holds a password."""
        doc = {k: v for k, v in asdict(self).items() if v is not None}
        _private_write(Path(path), json.dumps(doc, indent=2) + "\n")

    def transport_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `create_transport(self.url, ...)`."""
        kwargs: dict[str, Any] = {}
        if self.username is not None:
            kwargs["username"] = self.username
            kwargs["password"] = self.password
        if self.url.startswith("mqtts://"):
            tls = {"ca_certs": self.ca_file, "certfile": self.cert_file, "keyfile": self.key_file}
            kwargs["tls"] = {k: v for k, v in tls.items() if v is not None}
        elif self.ca_file or self.cert_file:
            raise DdnnError(f"{self.url}: certificates are given but the URL is not mqtts://")
        return kwargs


def acl_text(servers: Iterable[str], edges: Iterable[str], operators: Iterable[str] = ()) -> str:
    """Mosquitto ACL: every identity publishes requests only under its own id and reads only
    its own replies; servers read all requests and answer anyone; edges do the same for the
    requests sent to an edge. Live rollouts: anyone reads the version announcements and switch
    frames and fetches files under its own id; only servers announce and answer fetches, only
    edges announce switch frames, and only operators command (and read the answers to their
    own commands). Nothing else (no `$SYS`, no other prefix) is reachable."""
    q, eq, a = requests_root(), requests_root(EDGE_PREFIX), replies_root()
    c, f = control_root(), fetch_root()
    lines = [
        "# generated by ddnn.runtime.security: see docs/security.md",
        "# any identity: its own requests (to a server or an edge) and its own replies",
        f"pattern write {q}/+/+/%u",
        f"pattern write {eq}/+/+/%u",
        f"pattern read {a}/%u",
        "# live rollouts: announcements and switch frames for all; fetches under one's own id",
        f"pattern read {c}/v/#",
        f"pattern read {c}/s/#",
        f"pattern write {f}/q/+/%u",
        f"pattern read {f}/a/%u",
    ]
    for name in servers:
        lines += [f"user {name}", f"topic read {q}/#", f"topic write {a}/#"]
        lines += [f"topic read {c}/q/#", f"topic write {c}/a/#", f"topic write {c}/v/#"]
        lines += [f"topic read {f}/q/#", f"topic write {f}/a/#"]
    for name in edges:
        lines += [f"user {name}", f"topic read {eq}/#", f"topic write {a}/#"]
        lines += [f"topic write {c}/s/#"]
    for name in operators:
        lines += [f"user {name}", f"topic write {c}/q/{name}", f"topic read {c}/a/{name}"]
    return "\n".join(lines) + "\n"


@dataclass
class SecureSetup:
    """The files a secure broker runs with; `provision` makes them."""

    folder: Path
    identities: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (role, pw)
    tls: bool = True
    share_group: str = ""  # the servers' secret shared-subscription group
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None

    @property
    def password_file(self) -> Path:
        return self.folder / "passwd"

    @property
    def acl_file(self) -> Path:
        return self.folder / "acl"

    @property
    def identities_file(self) -> Path:
        """Names, roles and plain passwords (0600): kept so re-provisioning locks no one out."""
        return self.folder / "identities.json"

    def access_file(self, name: str) -> Path:
        return self.folder / "access" / f"{name}.json"

    def names(self, role: str) -> list[str]:
        return sorted(n for n, (r, _) in self.identities.items() if r == role)

    def write_access_files(self, url: str) -> None:
        """One access file per identity, pointing at the running broker, with the CA beside
        them: copying `access/<name>.json` and `access/ca.crt` to a device is all it needs."""
        folder = self.folder / "access"
        folder.mkdir(parents=True, exist_ok=True)
        ca = None
        if self.tls and self.ca_file is not None:
            ca = "ca.crt"
            if self.ca_file.resolve() != (folder / ca).resolve():
                shutil.copyfile(self.ca_file, folder / ca)
        for name, (role, password) in self.identities.items():
            group = self.share_group if role == "server" else None
            BrokerAccess(url, name, password, ca, share_group=group).save(self.access_file(name))

    def access(self, name: str) -> BrokerAccess:
        return BrokerAccess.load(self.access_file(name))


def provision(
    folder: str | Path,
    devices: Iterable[str],
    servers: Iterable[str] = (SERVER_IDENTITY,),
    edges: Iterable[str] = (EDGE_IDENTITY,),
    *,
    operators: Iterable[str] = (OPERATOR_IDENTITY,),
    tls: bool = True,
    hostnames: Iterable[str] = (),
    cert_file: str | Path | None = None,
    key_file: str | Path | None = None,
    ca_file: str | Path | None = None,
) -> SecureSetup:
    """Create (or extend) a secure broker folder. Identities already there keep their passwords,
    so re-provisioning with more devices does not lock out the others. With `cert_file`,
    `key_file` and `ca_file` the user's certificates are used instead of a generated CA.
    The folder is made absolute (mosquitto reads it from another working directory), and a
    folder this call created is removed again if it fails: no half-made setup is left."""
    root = Path(folder).resolve()
    wanted = _wanted_roles(devices, servers, edges, operators)
    created = not root.exists()
    try:
        return _provision(
            root, wanted, tls=tls, hostnames=list(hostnames),
            cert_file=cert_file, key_file=key_file, ca_file=ca_file,
        )  # fmt: skip
    except BaseException:
        if created:
            shutil.rmtree(root, ignore_errors=True)
        raise


def _wanted_roles(
    devices: Iterable[str],
    servers: Iterable[str],
    edges: Iterable[str],
    operators: Iterable[str] = (),
) -> dict[str, str]:
    """name -> role, checked before anything is written."""
    wanted: dict[str, str] = {}
    roles = (("device", devices), ("edge", edges), ("server", servers), ("operator", operators))
    for role, names in roles:
        for name in names:
            if wanted.setdefault(name, role) != role:
                raise DdnnError(
                    f"identity {name!r} is both a {wanted[name]} and a {role}: give each "
                    "device, edge and server its own name"
                )
            check_identifier("identity", name)
    return wanted


def _provision(
    root: Path,
    wanted: dict[str, str],
    *,
    tls: bool,
    hostnames: list[str],
    cert_file: str | Path | None,
    key_file: str | Path | None,
    ca_file: str | Path | None,
) -> SecureSetup:
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    setup = SecureSetup(root, tls=tls)
    known = _read_identities(setup.identities_file)
    group_file = root / "share_group"
    if not group_file.exists():
        _private_write(group_file, f"ddnn-{secrets.token_hex(16)}\n")
    setup.share_group = group_file.read_text().strip()
    for name, role in wanted.items():
        setup.identities[name] = (role, known.get(name) or secrets.token_urlsafe(24))
    for path in sorted((root / "access").glob("*.json")):  # revoked: no longer wanted
        if path.stem not in wanted:
            path.unlink()
    _private_write(
        setup.identities_file,
        json.dumps({n: {"role": r, "password": pw} for n, (r, pw) in setup.identities.items()}),
    )
    _write_password_file(setup)
    setup.acl_file.write_text(
        acl_text(setup.names("server"), setup.names("edge"), setup.names("operator"))
    )
    if tls:
        _tls_material(setup, hostnames, cert_file, key_file, ca_file)
    log.info(
        "secure broker folder %s: %d devices, %d edges, %d servers, %d operators, tls %s",
        root, *(len(setup.names(r)) for r in ROLES), tls,
    )  # fmt: skip
    return setup


def _read_identities(path: Path) -> dict[str, str]:
    """name -> password from an earlier provisioning, if any."""
    if not path.exists():
        return {}
    try:
        doc = json.loads(path.read_text())
        return {str(n): str(v["password"]) for n, v in doc.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DdnnError(f"{path} is damaged ({exc}); delete it to issue new passwords") from None


def _private_write(path: Path, text: str | bytes) -> None:
    """Create or replace a file only its owner can read (passwords, private keys)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(text.encode() if isinstance(text, str) else text)


def find_mosquitto_passwd() -> str:
    found = shutil.which("mosquitto_passwd") or shutil.which(
        "mosquitto_passwd", path="/usr/bin:/usr/local/bin:/opt/homebrew/bin"
    )
    if found is None:
        raise DdnnError(
            "mosquitto_passwd is not installed; it comes with Mosquitto "
            "(`sudo apt-get install mosquitto`)"
        )
    return found


def _write_password_file(setup: SecureSetup) -> None:
    """Plain `name:password` lines hashed in place by mosquitto_passwd (PBKDF2-SHA512), so the
    hash format is always the one the installed broker reads."""
    path = setup.password_file
    _private_write(path, "".join(f"{n}:{pw}\n" for n, (_, pw) in sorted(setup.identities.items())))
    done = subprocess.run(
        [find_mosquitto_passwd(), "-U", str(path)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        path.unlink(missing_ok=True)  # never leave plain passwords behind
        raise DdnnError(f"mosquitto_passwd failed: {done.stderr.strip() or done.stdout.strip()}")


def _tls_material(
    setup: SecureSetup,
    hostnames: list[str],
    cert_file: str | Path | None,
    key_file: str | Path | None,
    ca_file: str | Path | None,
) -> None:
    given = [p for p in (cert_file, key_file, ca_file) if p is not None]
    if given:
        if len(given) != 3:
            raise DdnnError("to use your own certificates give all of cert, key and CA files")
        for p in given:
            if not Path(p).is_file():
                raise DdnnError(f"certificate file {p} does not exist")
        setup.cert_file, setup.key_file, setup.ca_file = (
            Path(cert_file).resolve(),  # type: ignore[arg-type]
            Path(key_file).resolve(),  # type: ignore[arg-type]
            Path(ca_file).resolve(),  # type: ignore[arg-type]
        )
        for path in (setup.cert_file, setup.ca_file):
            left = _days_left(path)
            if left <= 0:
                raise DdnnError(f"certificate {path} has expired: renew it with your CA")
            if left < _RENEW_DAYS:
                log.warning(
                    "certificate %s expires in %.0f days: renew it with your CA", path, left
                )
        return
    tls_dir = setup.folder / "tls"
    setup.ca_file, setup.cert_file, setup.key_file = (
        tls_dir / "ca.crt",
        tls_dir / "server.crt",
        tls_dir / "server.key",
    )
    if setup.ca_file.exists() and _days_left(setup.ca_file) <= 0:
        raise DdnnError(
            f"the private CA {setup.ca_file} has expired: move {tls_dir} away to issue a new "
            "one, then copy the new access/ca.crt to every device"
        )
    names = sorted({"localhost", "127.0.0.1", socket.gethostname(), *hostnames} - {"0.0.0.0"})
    if setup.cert_file.exists():
        left = _days_left(setup.cert_file)
        if left >= _RENEW_DAYS and _certificate_covers(setup.cert_file, names):
            return
        if left < _RENEW_DAYS:
            log.warning(
                "broker certificate %s %s: issuing a new one from the same CA",
                setup.cert_file, "has expired" if left <= 0 else f"expires in {left:.0f} days",
            )  # fmt: skip
    generate_tls(tls_dir, names)


def _days_left(path: Path) -> float:
    """Days until the certificate expires; 0 or less once it has."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(path.read_bytes())
    left = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    return left.total_seconds() / 86400


def generate_tls(folder: Path, hostnames: list[str]) -> None:
    """A broker certificate for `hostnames` (IPs or DNS names), signed by the folder's private
    CA, which is created only once: devices keep trusting it when the certificate is renewed or
    gains a name. Enough for tests and a home network; docs/security.md says how to use real
    certificates."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    pem = serialization.Encoding.PEM
    pkcs8 = serialization.PrivateFormat.PKCS8
    ca_key_file, ca_file = folder / "ca.key", folder / "ca.crt"
    if ca_key_file.exists() and ca_file.exists():
        ca_key = serialization.load_pem_private_key(ca_key_file.read_bytes(), password=None)
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise DdnnError(
                f"{ca_key_file} is not the EC key ddnn made; move it away to start over"
            )
        ca = x509.load_pem_x509_certificate(ca_file.read_bytes())
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ddnn private CA")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=10 * 365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
            )
            .sign(ca_key, hashes.SHA256())
        )
        _private_write(ca_key_file, ca_key.private_bytes(pem, pkcs8, serialization.NoEncryption()))
        ca_file.write_bytes(ca.public_bytes(pem))
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = []
    for name in hostnames:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (folder / "server.crt").write_bytes(cert.public_bytes(pem))
    _private_write(
        folder / "server.key", key.private_bytes(pem, pkcs8, serialization.NoEncryption())
    )
    log.info("broker certificate for %s signed by the CA in %s", hostnames, folder)


def _certificate_covers(path: Path, names: list[str]) -> bool:
    """Whether the certificate names all of `names` (expiry is `_days_left`'s)."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(path.read_bytes())
    try:
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have = [str(v) for v in alt.get_values_for_type(x509.IPAddress)]
    have += list(alt.get_values_for_type(x509.DNSName))
    return set(names) <= set(have)
