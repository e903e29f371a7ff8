//! The simulated agents' certificates: one per agent, issued in memory by the bench CA,
//! named like the agent's (`agent/<host>`, SAN URI `portcullis://agent/<host>`).

use super::{host_name, source_addr};
use anyhow::Result;
use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose, SanType,
    SerialNumber,
};

pub(super) struct AgentCert {
    pub(super) host: String,
    pub(super) source: std::net::IpAddr,
    pub(super) cert_pem: String,
    pub(super) key_pem: String,
}

pub(super) fn issue(issuer: &Issuer<'_, KeyPair>, i: usize) -> Result<AgentCert> {
    let host = host_name(i);
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("agent/{host}"));
    params.subject_alt_names = vec![
        SanType::DnsName(host.clone().try_into()?),
        SanType::URI(format!("portcullis://agent/{host}").try_into()?),
    ];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let serial = u64::try_from(i)? + 0x5000_0000;
    params.serial_number = Some(SerialNumber::from_slice(&serial.to_be_bytes()));
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = params.signed_by(&key, issuer)?;
    Ok(AgentCert {
        host,
        source: source_addr(i),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}
