"""The TLS helpers without a network: certificate details, the errors that name the setting
and file, the peer table's lookups, the diagnosis of client-side failures, and the config
checks of [tls] and [central]'s TLS keys."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from edge_node.config import EdgeConfig
from edge_node.errors import ConfigError
from edge_node.tls import (
    Peer,
    ServerTLS,
    TLSError,
    TLSFiles,
    _peer_of,
    client_context,
    read_cert,
    tls_problem,
)
from tests.pki import PKI


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return PKI(tmp_path / "pki")


def test_read_cert_lists_common_name_and_alt_names(pki: PKI) -> None:
    cert, _ = pki.issue("srv", "gw.example", "10.0.0.5", common_name="gateway-1")
    info = read_cert(str(cert))
    assert info.names == ("gateway-1", "gw.example", "10.0.0.5")
    assert "CN=gateway-1" in info.subject
    assert info.not_after_s > info.not_before_s
    assert len(info.sha256) == 64


def test_a_key_of_another_certificate_is_named(pki: PKI) -> None:
    cert, _ = pki.issue("a", "a.example")
    _, other_key = pki.issue("b", "b.example")
    with pytest.raises(TLSError) as err:
        ServerTLS(TLSFiles(str(cert), str(other_key)))
    assert err.value.key == "tls.key_file" and str(other_key) in str(err.value)


def test_missing_and_non_pem_files_are_named(pki: PKI, tmp_path: Path) -> None:
    cert, key = pki.issue("a", "a.example")
    with pytest.raises(TLSError) as err:
        ServerTLS(TLSFiles(str(tmp_path / "nope.crt"), str(key)))
    assert err.value.key == "tls.cert_file" and "does not exist" in str(err.value)
    junk = tmp_path / "junk.pem"
    junk.write_text("hello\n")
    with pytest.raises(TLSError) as err:
        ServerTLS(TLSFiles(str(cert), str(key), str(junk), "required"))
    assert err.value.key == "tls.client_ca_file"
    with pytest.raises(TLSError) as err:
        client_context(ca_file=str(junk))
    assert err.value.key == "central.ca_file"


def test_reload_keeps_the_old_context_when_the_new_files_do_not_load(pki: PKI) -> None:
    cert, key = pki.issue("a", "a.example")
    tls = ServerTLS(TLSFiles(str(cert), str(key)))
    before = (tls.context, tls.cert)
    key.write_text("broken\n")
    with pytest.raises(TLSError):
        tls.reload()
    assert (tls.context, tls.cert) == before
    pki.issue("a", "a.example")
    assert tls.reload() is True and tls.cert != before[1]
    assert tls.reload() is False  # the same files again: the same certificate


def test_client_certs_mode_changes_need_a_restart(pki: PKI) -> None:
    cert, key = pki.issue("a", "a.example")
    tls = ServerTLS(TLSFiles(str(cert), str(key)))
    with pytest.raises(TLSError) as err:
        tls.reload(TLSFiles(str(cert), str(key), str(pki.ca_file), "required"))
    assert "restart" in str(err.value)


def test_peer_lookup_needs_https_and_the_same_connection(pki: PKI) -> None:
    cert, key = pki.issue("a", "a.example")
    tls = ServerTLS(TLSFiles(str(cert), str(key)))
    peer = Peer("pump-1", ("pump-1",), "CN=pump-1")
    tls._peers[(("127.0.0.1", 9300), ("10.0.0.7", 40000))] = peer
    scope = {"scheme": "https", "server": ("127.0.0.1", 9300), "client": ("10.0.0.7", 40000)}
    assert tls.peer(scope) is peer
    assert tls.peer(scope | {"scheme": "http"}) is None  # the plain listener: no certificate
    assert tls.peer(scope | {"client": ("10.0.0.7", 40001)}) is None
    assert tls.peer(scope | {"server": ("127.0.0.1", 9301)}) is None


def test_peer_identity_is_the_common_name_else_the_first_name() -> None:
    cert = {"subject": ((("organizationName", "acme"),), (("commonName", "pump-7"),)),
            "subjectAltName": (("DNS", "pump-7.plant"), ("IP Address", "10.0.0.7"))}
    peer = _peer_of(cert)
    assert peer.identity == "pump-7" and peer.names == ("pump-7", "pump-7.plant")
    assert peer.subject == "O=acme,CN=pump-7"
    no_cn = _peer_of({"subject": (), "subjectAltName": (("URI", "spiffe://acme/edge-1"),)})
    assert no_cn.identity == "spiffe://acme/edge-1"


def _verify_error(message: str) -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED]")
    exc.verify_message = message
    exc.reason = "CERTIFICATE_VERIFY_FAILED"
    return exc


@pytest.mark.parametrize(("message", "hint"), [
    ("unable to get local issuer certificate", "central.ca_file"),
    ("self-signed certificate in certificate chain", "central.ca_file"),
    ("Hostname mismatch, certificate is not valid for 'x'.", "central.server_name"),
    ("certificate has expired", "renew it"),
])
def test_tls_problem_names_verification_failures_and_what_to_set(message: str,
                                                                   hint: str) -> None:
    wrapped = ConnectionError("connect failed")
    wrapped.__cause__ = _verify_error(message)
    problem = tls_problem(wrapped)
    assert problem is not None and problem.startswith("TLS: ") and hint in problem


def test_tls_problem_names_alerts_from_central() -> None:
    alert = ssl.SSLError(1, "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert")
    alert.reason = "TLSV13_ALERT_CERTIFICATE_REQUIRED"
    outer = OSError("read failed")
    outer.__context__ = alert
    problem = tls_problem(outer)
    assert problem is not None and "central.client_cert" in problem


def test_tls_problem_is_none_for_other_failures() -> None:
    assert tls_problem(ConnectionRefusedError(111, "refused")) is None


def _cfg(tmp_path: Path, extra: str, url: str = "https://central.test:9400") -> EdgeConfig:
    p = tmp_path / "edge.toml"
    p.write_text(f'node_id = "n1"\ndata_dir = "{tmp_path / "d"}"\n[central]\nurl = "{url}"\n'
                 f'api_key = "k"\n{extra}')
    return EdgeConfig.from_toml(p)


@pytest.mark.parametrize(("extra", "key"), [
    ('[tls]\ncert_file = "/x.crt"\n', "tls.key_file"),
    ('[tls]\nclient_certs = "required"\n', "tls.client_certs"),
    ('[tls]\nplain_listen = "127.0.0.1:9301"\n', "tls.plain_listen"),
    ('client_key = "/k.pem"\n', "central.client_cert"),
])
def test_config_refuses_tls_settings_that_do_not_fit(tmp_path: Path, extra: str,
                                                     key: str) -> None:
    with pytest.raises(ConfigError) as err:
        _cfg(tmp_path, extra)
    assert err.value.key == key


def test_config_needs_https_for_central_tls_keys_and_a_ca_for_client_certs(
        tmp_path: Path, pki: PKI) -> None:
    with pytest.raises(ConfigError) as err:
        _cfg(tmp_path, f'ca_file = "{pki.ca_file}"\n', url="http://central.test:9400")
    assert err.value.key == "central.ca_file" and "https://" in str(err.value)
    cert, key = pki.issue("edge", "127.0.0.1")
    with pytest.raises(ConfigError) as err:
        _cfg(tmp_path, f'[tls]\ncert_file = "{cert}"\nkey_file = "{key}"\n'
                       'client_certs = "optional"\n')
    assert err.value.key == "tls.client_ca_file"
    cfg = _cfg(tmp_path, f'[tls]\ncert_file = "{cert}"\nkey_file = "{key}"\n'
                         f'client_ca_file = "{pki.ca_file}"\nclient_certs = "optional"\n')
    assert cfg.tls_files().client_certs == "optional"


def test_plain_http_to_a_remote_central_is_warned_about(tmp_path: Path) -> None:
    assert _cfg(tmp_path, "").security_warnings() == []
    assert _cfg(tmp_path, "", url="http://127.0.0.1:9400").security_warnings() == []
    assert _cfg(tmp_path, "", url="http://localhost:9400").security_warnings() == []
    warnings = _cfg(tmp_path, "", url="http://central.test:9400").security_warnings()
    assert len(warnings) == 1 and "plain http" in warnings[0]
