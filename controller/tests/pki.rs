//! PKI integration tests: files and modes written by `Pki`, refusal without `force`,
//! identities and serials read back from issued certificates, revocation, and real
//! mutual-TLS handshakes (rustls, in memory) with the issued certificates.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use portcullis_controller::identity::{RevocationList, Role, identity_from_der, serial_hex};
use portcullis_controller::pki::{CertRole, Issued, Pki, PkiError, load_revoked};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

fn setup() -> (tempfile::TempDir, Pki) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("pki");
    Pki::init(&dir, false).expect("init");
    (tmp, Pki::new(dir))
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

fn cert_der(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).expect("read certificate")
}

#[test]
fn init_and_issue_write_expected_files() {
    let (_tmp, pki) = setup();
    let dir = pki.dir().to_owned();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("ca/ca.key")), 0o600);
    assert_eq!(mode(&dir.join("ca")), 0o700);
    assert!(!dir.join("ca.key").exists(), "the CA key is kept apart");
    assert_eq!(mode(&dir.join("ca.crt")), 0o644);

    let ctl = pki
        .issue_controller(&["10.77.0.1".into(), "ctl.example".into()], false)
        .expect("controller");
    let agent = pki.issue_agent("web1", false).expect("agent");
    let admin = pki.issue_admin("alice", false).expect("admin");
    for (issued, stem) in [
        (&ctl, "controller"),
        (&agent, "agent-web1"),
        (&admin, "admin-alice"),
    ] {
        assert_eq!(issued.cert, dir.join(format!("{stem}.crt")));
        assert_eq!(issued.key, dir.join(format!("{stem}.key")));
        assert_eq!(
            issued.written,
            [
                issued.key.clone(),
                issued.cert.clone(),
                dir.join("issued.json")
            ]
        );
        assert_eq!(mode(&issued.key), 0o600, "{}", issued.key.display());
        assert_eq!(mode(&issued.cert), 0o644);
        assert_eq!(issued.record.serial.len(), 32, "{:?}", issued.record);
    }
    let ledger = pki.issued().expect("ledger");
    let roles: Vec<_> = ledger.iter().map(|r| (r.role, r.name.as_str())).collect();
    assert_eq!(
        roles,
        [
            (CertRole::Ca, "ca"),
            (CertRole::Controller, "controller"),
            (CertRole::Agent, "web1"),
            (CertRole::Admin, "alice"),
        ]
    );
    assert_eq!(ledger[2].file, "agent-web1.crt");
    // No temporary files left behind.
    let stray: Vec<_> = std::fs::read_dir(&dir)
        .expect("readdir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}

#[test]
fn refuses_to_overwrite_without_force() {
    let (_tmp, pki) = setup();
    let err = Pki::init(pki.dir(), false).expect_err("second init");
    assert!(
        matches!(&err, PkiError::Exists(p) if p.ends_with("ca.crt")),
        "{err}"
    );
    assert!(err.to_string().contains("--force"), "{err}");

    let first = pki.issue_agent("web1", false).expect("agent");
    let err = pki.issue_agent("web1", false).expect_err("overwrite");
    assert!(err.to_string().contains("agent-web1.crt"), "{err}");
    assert!(err.to_string().contains("--force"), "{err}");
    // A stray key alone also blocks issuance.
    std::fs::remove_file(&first.cert).expect("rm cert");
    let err = pki.issue_agent("web1", false).expect_err("key exists");
    assert!(err.to_string().contains("agent-web1.key"), "{err}");

    // Loosened permissions are not inherited by a forced rewrite.
    std::fs::set_permissions(&first.key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let second = pki.issue_agent("web1", true).expect("forced");
    assert_ne!(first.record.serial, second.record.serial);
    assert_eq!(mode(&second.key), 0o600);
    Pki::init(pki.dir(), true).expect("forced init");
}

#[test]
fn invalid_names_and_sans_are_rejected() {
    let (_tmp, pki) = setup();
    for bad in [
        "",
        ".hidden",
        "-x",
        "a/b",
        "../etc",
        "a b",
        "a:b",
        &"h".repeat(254),
    ] {
        assert!(
            matches!(pki.issue_agent(bad, false), Err(PkiError::InvalidName(_))),
            "agent {bad:?}"
        );
        assert!(matches!(
            pki.issue_admin(bad, false),
            Err(PkiError::InvalidName(_))
        ));
    }
    assert!(matches!(
        pki.issue_controller(&[], false),
        Err(PkiError::NoSan)
    ));
    let err = pki
        .issue_controller(&["ok.example".into(), "bad_name!".into()], false)
        .expect_err("bad san");
    assert!(
        matches!(&err, PkiError::InvalidSan(s) if s == "bad_name!"),
        "{err}"
    );
    // Nothing was written for the failed attempts.
    assert_eq!(pki.issued().expect("ledger").len(), 1);

    let no_ca = Pki::new(pki.dir().join("nope"));
    assert!(matches!(
        no_ca.issue_agent("web1", false),
        Err(PkiError::NoCa(_))
    ));
}

#[test]
fn identity_and_serial_read_back_from_issued_certs() {
    let (_tmp, pki) = setup();
    let cases: [(Issued, Role); 4] = [
        (
            pki.issue_controller(&["10.77.0.1".into()], false)
                .expect("ctl"),
            Role::Controller,
        ),
        (
            pki.issue_agent("web1", false).expect("agent"),
            Role::Agent("web1".into()),
        ),
        // Underscore is a valid host name here but not a DNS SAN: URI only.
        (
            pki.issue_agent("db_2", false).expect("agent"),
            Role::Agent("db_2".into()),
        ),
        (
            pki.issue_admin("alice", false).expect("admin"),
            Role::Admin("alice".into()),
        ),
    ];
    let ledger = pki.issued().expect("ledger");
    for (issued, role) in cases {
        let peer = identity_from_der(&cert_der(&issued.cert)).expect("identity");
        assert_eq!(peer.role, role);
        assert_eq!(peer.serial, issued.record.serial);
        assert!(ledger.iter().any(|r| r.serial == peer.serial));
    }
    // The CA has no role URI.
    let err = identity_from_der(&cert_der(&pki.ca_cert())).expect_err("ca has no role");
    assert!(err.to_string().contains("portcullis://"), "{err}");
    assert!(identity_from_der(b"not a certificate").is_err());
    assert_eq!(serial_hex(&[0, 0, 0x1f]), "1f");
}

#[test]
fn revoke_by_serial_label_and_name() {
    let (_tmp, pki) = setup();
    let a1 = pki.issue_agent("web1", false).expect("agent");
    let a2 = pki.issue_agent("web1", true).expect("agent again");
    let admin = pki.issue_admin("bob", false).expect("admin");
    pki.issue_agent("bob", false)
        .expect("agent named like the admin");
    let list = RevocationList::open(pki.revoked_path()).expect("open");
    assert!(!list.is_revoked(&a1.record.serial));

    // A bare name revokes every certificate issued to it.
    let revoked = pki.revoke("web1").expect("revoke");
    let serials: Vec<_> = revoked.added.iter().map(|(s, _)| s.clone()).collect();
    assert_eq!(
        serials,
        [a1.record.serial.clone(), a2.record.serial.clone()]
    );
    assert_eq!(
        revoked.written,
        [pki.revoked_path(), pki.dir().join("revoked.sig")]
    );
    assert!(list.is_revoked(&a1.record.serial), "reloaded after change");
    assert!(list.is_revoked(&a2.record.serial.to_uppercase()));
    assert!(!list.is_revoked(&admin.record.serial));

    // Again: nothing new, nothing written.
    let again = pki.revoke("agent/web1").expect("revoke again");
    assert!(again.added.is_empty() && again.written.is_empty());
    assert_eq!(again.already.len(), 2);

    // `bob` is both an agent and an admin.
    let err = pki.revoke("bob").expect_err("ambiguous");
    assert!(err.to_string().contains("admin/bob and agent/bob"), "{err}");
    // By serial, with colons and upper case.
    let colons: Vec<String> = (0..admin.record.serial.len())
        .step_by(2)
        .map(|i| admin.record.serial[i..i + 2].to_uppercase())
        .collect();
    let by_serial = pki.revoke(&colons.join(":")).expect("by serial");
    assert_eq!(
        by_serial.added[0],
        (admin.record.serial.clone(), "admin/bob".into())
    );
    assert!(list.is_revoked(&admin.record.serial));

    // The CA cannot be revoked; unknown names are errors; unknown serials are accepted.
    let ca_serial = pki.issued().expect("ledger")[0].serial.clone();
    assert!(matches!(pki.revoke(&ca_serial), Err(PkiError::RevokeCa)));
    assert!(matches!(pki.revoke("nobody"), Err(PkiError::NoMatch(_))));
    pki.revoke("0x00ABCDEF").expect("foreign serial");
    assert!(list.is_revoked("abcdef"));

    let on_disk = load_revoked(&pki.revoked_path()).expect("load");
    assert_eq!(on_disk, list.serials());
    assert_eq!(on_disk.len(), 4);
    let listed = pki.list().expect("list");
    let flags: Vec<_> = listed
        .iter()
        .map(|l| (l.record.label(), l.revoked))
        .collect();
    assert_eq!(
        flags,
        [
            ("ca".to_owned(), false),
            ("agent/web1".to_owned(), true),
            ("agent/web1".to_owned(), true),
            ("admin/bob".to_owned(), true),
            ("agent/bob".to_owned(), false),
        ]
    );
}

#[test]
fn revocation_list_follows_manual_edits() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("revoked.txt");
    let list = RevocationList::open(&path).expect("missing file is empty");
    assert!(!list.is_revoked("0a"));
    std::fs::write(&path, "0a\n").expect("write");
    assert!(list.is_revoked("0a"));
    // Same inode, new content.
    std::fs::write(&path, "# emptied\n").expect("write");
    assert!(!list.is_revoked("0a"));
    std::fs::write(&path, "0b\n").expect("write");
    assert!(list.is_revoked("0b"));
    // A broken file keeps the last good set instead of un-revoking.
    std::fs::write(&path, "0b\nzz-not-hex\n").expect("write");
    assert!(list.is_revoked("0b"));
    std::fs::remove_file(&path).expect("rm");
    assert!(!list.is_revoked("0b"));
    // Opening a broken file is an error.
    std::fs::write(&path, "nope\n").expect("write");
    assert!(RevocationList::open(&path).is_err());
}

// ---- mutual TLS with rustls, in memory ----

fn roots(ca: &Path) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots.add(cert_der(ca)).expect("add root");
    Arc::new(roots)
}

fn server_config(pki: &Pki) -> ServerConfig {
    let verifier = WebPkiClientVerifier::builder(roots(&pki.ca_cert()))
        .build()
        .expect("verifier");
    let (cert, key) = pki.cert_paths(&Role::Controller);
    ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![cert_der(&cert)],
            PrivateKeyDer::from_pem_file(&key).expect("key"),
        )
        .expect("server config")
}

fn client_config(ca: &Path, identity: Option<&Issued>) -> ClientConfig {
    let builder = ClientConfig::builder().with_root_certificates(roots(ca));
    match identity {
        Some(issued) => builder
            .with_client_auth_cert(
                vec![cert_der(&issued.cert)],
                PrivateKeyDer::from_pem_file(&issued.key).expect("key"),
            )
            .expect("client auth"),
        None => builder.with_no_client_auth(),
    }
}

#[derive(Debug)]
enum Failed {
    Client(rustls::Error),
    Server(rustls::Error),
}

/// Runs a full handshake in memory; on success returns the server's view of the peer.
fn handshake(
    client: ClientConfig,
    server: ServerConfig,
    name: &str,
) -> Result<Vec<CertificateDer<'static>>, Failed> {
    let name = ServerName::try_from(name.to_owned()).expect("server name");
    let mut c = ClientConnection::new(Arc::new(client), name).map_err(Failed::Client)?;
    let mut s = ServerConnection::new(Arc::new(server)).map_err(Failed::Server)?;
    for _ in 0..32 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).expect("client write");
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd).expect("server read");
            s.process_new_packets().map_err(Failed::Server)?;
        }
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).expect("server write");
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).expect("client read");
            c.process_new_packets().map_err(Failed::Client)?;
        }
        if !c.is_handshaking() && !s.is_handshaking() {
            return Ok(s.peer_certificates().map(<[_]>::to_vec).unwrap_or_default());
        }
    }
    panic!("handshake did not finish");
}

#[test]
fn mutual_tls_accepts_only_our_client_certs() {
    let (_tmp, pki) = setup();
    pki.issue_controller(&["ctl.example".into(), "10.77.0.1".into()], false)
        .expect("controller");
    let agent = pki.issue_agent("web1", false).expect("agent");
    let admin = pki.issue_admin("alice", false).expect("admin");

    for (issued, role) in [
        (&agent, Role::Agent("web1".into())),
        (&admin, Role::Admin("alice".into())),
    ] {
        for name in ["ctl.example", "10.77.0.1"] {
            let peer = handshake(
                client_config(&pki.ca_cert(), Some(issued)),
                server_config(&pki),
                name,
            )
            .expect("handshake");
            let identity = identity_from_der(&peer[0]).expect("identity");
            assert_eq!(identity.role, role);
            assert_eq!(identity.serial, issued.record.serial);
        }
    }

    // The client checks the controller's SANs.
    let wrong_name = handshake(
        client_config(&pki.ca_cert(), Some(&agent)),
        server_config(&pki),
        "other.example",
    );
    assert!(
        matches!(
            wrong_name,
            Err(Failed::Client(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. }
            )))
        ),
        "{wrong_name:?}"
    );

    // No client certificate: refused by the server.
    let anonymous = handshake(
        client_config(&pki.ca_cert(), None),
        server_config(&pki),
        "ctl.example",
    );
    assert!(
        matches!(
            anonymous,
            Err(Failed::Server(rustls::Error::NoCertificatesPresented))
        ),
        "{anonymous:?}"
    );

    // A certificate from another CA: refused by the server. Both CAs are named
    // "CN=Portcullis CA", so webpki may find our CA by name and fail the signature.
    let other_tmp = tempfile::tempdir().expect("tempdir");
    Pki::init(other_tmp.path(), false).expect("other ca");
    let other = Pki::new(other_tmp.path());
    let intruder = other.issue_agent("web1", false).expect("foreign agent");
    let foreign = handshake(
        client_config(&pki.ca_cert(), Some(&intruder)),
        server_config(&pki),
        "ctl.example",
    );
    assert!(
        matches!(
            foreign,
            Err(Failed::Server(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer | rustls::CertificateError::BadSignature
            )))
        ),
        "{foreign:?}"
    );
}

#[test]
fn tonic_tls_configs_load() {
    let (_tmp, pki) = setup();
    pki.issue_controller(&["ctl.example".into()], false)
        .expect("controller");
    let agent = pki.issue_agent("web1", false).expect("agent");
    portcullis_controller::pki::server_tls(pki.dir()).expect("server tls");
    portcullis_controller::pki::client_tls(
        &pki.ca_cert(),
        &agent.cert,
        &agent.key,
        Some("ctl.example"),
    )
    .expect("client tls");
    let missing = portcullis_controller::pki::client_tls(
        &pki.ca_cert(),
        &pki.dir().join("agent-nope.crt"),
        &agent.key,
        None,
    );
    assert!(missing.is_err());
}

/// `serve` needs `ca.crt`, its own pair and `revoked.txt`: not the CA key.
#[test]
fn the_server_config_loads_without_the_ca_key() {
    let (_tmp, pki) = setup();
    pki.issue_controller(&["10.77.0.1".into()], false)
        .expect("controller");
    std::fs::remove_dir_all(pki.dir().join("ca")).expect("remove the CA key dir");
    portcullis_controller::pki::tls::server_config(pki.dir()).expect("server config");
    // Issuing needs it, and says so.
    let err = pki.issue_agent("web1", false).expect_err("no CA key");
    assert!(matches!(err, PkiError::NoCa(_)), "{err}");
}

/// A PKI made before the CA key moved to `ca/` still issues.
#[test]
fn a_legacy_ca_key_beside_ca_crt_is_still_used() {
    let (_tmp, pki) = setup();
    let dir = pki.dir().to_owned();
    std::fs::rename(dir.join("ca/ca.key"), dir.join("ca.key")).expect("move");
    assert_eq!(pki.ca_key(), dir.join("ca.key"));
    pki.issue_agent("web1", false)
        .expect("issue with the legacy key");
}
