//! A pool CA made on the spot, and certificates it signs for the pool's members: for tests and
//! trials of TLS associations (feature `pki`). A real pool keeps its CA key offline; SECURITY.md
//! shows the same set-up with openssl.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use super::tls::TlsPem;

/// A certificate authority whose certificates make peers members of one pool.
pub struct PoolCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl PoolCa {
    /// A fresh CA named `name`.
    pub fn new(name: &str) -> Result<Self, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let pem = params.self_signed(&key)?.pem();
        Ok(PoolCa {
            issuer: Issuer::new(params, key),
            pem,
        })
    }

    /// The CA certificate (PEM): what every member trusts.
    pub fn certificate_pem(&self) -> &str {
        &self.pem
    }

    /// Credentials of a member called `name`, valid as client and as server for the names
    /// and addresses in `subject_alt_names` (IP addresses are recognised).
    pub fn issue(&self, name: &str, subject_alt_names: &[&str]) -> Result<TlsPem, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.subject_alt_names = subject_alt_names
            .iter()
            .map(|san| match san.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName((*san).try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(TlsPem {
            cert: cert.pem().into_bytes(),
            key: key.serialize_pem().into_bytes(),
            ca: self.pem.clone().into_bytes(),
        })
    }
}

/// Writes `pem` as `DIR/NAME.crt`, `DIR/NAME.key` and `DIR/ca.crt`, for programs taking
/// `--tls-cert/--tls-key/--tls-ca`.
pub fn write_files(
    pem: &TlsPem,
    dir: &std::path::Path,
    name: &str,
) -> std::io::Result<super::tls::TlsFiles> {
    let files = super::tls::TlsFiles {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
        ca: dir.join("ca.crt"),
    };
    std::fs::write(&files.cert, &pem.cert)?;
    std::fs::write(&files.key, &pem.key)?;
    std::fs::write(&files.ca, &pem.ca)?;
    Ok(files)
}
