//! The build's TLS identity: an ephemeral certificate authority (ECDSA
//! P-256) that signs exactly one server certificate for the addresses the
//! server binds to, and is then dropped.
//!
//! Nothing is written to disk. The CA certificate (public) is what build
//! steps trust (`HABITUS_CA`); its private key lives only for the time it
//! takes to sign the leaf, so no other certificate can ever chain to it.
//! The leaf's private key is handed to rustls and its serialized copy is
//! zeroed. rcgen keeps its own copy of each key's encoding inside
//! `KeyPair`, which it does not zero; that copy is freed when the key pair
//! is dropped, right after signing. Only TLS 1.3 and 1.2 are offered.

use std::net::IpAddr;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::ServerConfig;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use zeroize::Zeroizing;

/// Why the TLS identity could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Key generation or signing failed.
    #[error("cannot create the build's certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls rejected the configuration.
    #[error("cannot configure TLS: {0}")]
    Rustls(#[from] rustls::Error),
    /// No address to put in the certificate.
    #[error("the secrets server certificate needs at least one address")]
    NoNames,
}

/// A server configuration and the CA certificate that clients trust.
pub struct Identity {
    /// The rustls configuration holding the leaf certificate and key.
    pub config: Arc<ServerConfig>,
    /// The CA certificate, PEM (public).
    pub ca_pem: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").finish_non_exhaustive()
    }
}

/// The subject alternative names for a server bound to `ip`: the address
/// itself; for an unspecified address (`0.0.0.0`, `::`) the loopback
/// addresses and `localhost`, the only names habitus can vouch for.
pub fn names_for(ip: IpAddr) -> Vec<String> {
    if ip.is_unspecified() {
        vec!["127.0.0.1".into(), "::1".into(), "localhost".into()]
    } else {
        vec![ip.to_string()]
    }
}

/// Makes a fresh CA, signs a server certificate for `names` (IP addresses
/// or DNS names) with it, drops the CA key, and returns the TLS server
/// configuration plus the CA certificate.
pub fn generate(names: &[String]) -> Result<Identity, TlsError> {
    if names.is_empty() {
        return Err(TlsError::NoNames);
    }
    let (ca_pem, leaf_der, leaf_key) = {
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut ca_params = CertificateParams::default();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "habitus ephemeral build CA");
        ca_params.distinguished_name = dn;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let ca_pem = ca_cert.pem();

        let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut leaf_params = CertificateParams::new(Vec::<String>::new())?;
        for name in names {
            leaf_params
                .subject_alt_names
                .push(match name.parse::<IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(name.clone().try_into()?),
                });
        }
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "habitus secrets server");
        leaf_params.distinguished_name = dn;
        leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf_params.use_authority_key_identifier_extension = true;
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = leaf_params.signed_by(&leaf_key, &issuer)?;
        // `issuer` (and with it the CA private key) is dropped at the end
        // of this block: nothing can be signed by this CA any more.
        (ca_pem, leaf.der().clone(), leaf_key)
    };

    let key_der = Zeroizing::new(leaf_key.serialize_der());
    drop(leaf_key);
    let signing_key = rustls::crypto::ring::sign::any_ecdsa_type(&PrivateKeyDer::Pkcs8(
        PrivatePkcs8KeyDer::from(key_der.as_slice()),
    ))?;
    drop(key_der);

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(CertifiedKey::new(
            vec![leaf_der],
            signing_key,
        ))));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Identity {
        config: Arc::new(config),
        ca_pem,
    })
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::{generate, names_for, TlsError};

    #[test]
    fn a_ca_pem_and_a_server_config_come_out() {
        let identity = generate(&["127.0.0.1".into(), "localhost".into()]).unwrap();
        assert!(identity.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(!identity.ca_pem.contains("PRIVATE KEY"));
        assert_eq!(identity.config.alpn_protocols, [b"http/1.1".to_vec()]);
        // Two builds never share a CA.
        let other = generate(&["127.0.0.1".into()]).unwrap();
        assert_ne!(identity.ca_pem, other.ca_pem);
    }

    #[test]
    fn unspecified_binds_name_loopback() {
        assert_eq!(
            names_for(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            ["127.0.0.1", "::1", "localhost"]
        );
        assert_eq!(names_for("172.18.0.1".parse().unwrap()), ["172.18.0.1"]);
        assert!(matches!(generate(&[]), Err(TlsError::NoNames)));
    }
}
