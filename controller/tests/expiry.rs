//! Certificate expiry ends what is open: a client certificate's `notAfter` closes its
//! connection (and every stream on it) at that moment, not at the next handshake.

#![allow(clippy::unwrap_used)]

mod common;

use common::TestController;
use portcullis_proto::v1;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_stream::StreamExt as _;

/// An admin certificate from the test CA valid for `secs` more seconds.
fn short_lived_admin(
    ctl: &TestController,
    name: &str,
    secs: u64,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(ctl.pki.ca_key()).unwrap()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(
        &std::fs::read_to_string(ctl.pki.ca_cert()).unwrap(),
        ca_key,
    )
    .unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        format!("portcullis://admin/{name}").try_into().unwrap(),
    )];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let at = |s: u64| {
        x509_parser::time::ASN1Time::from_timestamp(i64::try_from(s).unwrap())
            .unwrap()
            .to_datetime()
    };
    params.not_before = at(now - 60);
    params.not_after = at(now + secs);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let dir = ctl.dir.path();
    let (c, k) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

#[tokio::test]
async fn an_expiring_admin_certificate_ends_its_logs_follow_at_not_after() {
    let ctl = TestController::start().await;
    let (cert, key) = short_lived_admin(&ctl, "temp", 3);
    let ch = ctl.channel_with(ctl.pki.ca_cert(), cert, key).await;
    let mut admin = v1::admin_client::AdminClient::new(ch);
    let started = Instant::now();
    let mut follow = admin
        .logs(v1::LogsRequest {
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match follow.next().await {
                Some(Ok(_)) => continue,
                other => return other,
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "still streaming 10 s after a 3 s certificate expired"
    );
    // Not before notAfter (minus the second the timestamp was rounded down to).
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    // And the expired certificate cannot connect again.
    let again = admin.status(v1::StatusRequest {}).await;
    assert!(again.is_err(), "{again:?}");
}
