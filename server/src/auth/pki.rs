//! Our certificate authority: the CA and server certificate of a fresh install, and client
//! certificates carrying a [`Principal`] as a `walvault://` URI.
//!
//! Keys are ECDSA P-256 (rcgen's default). Files are written durably, keys with mode 0600,
//! and an existing CA is never overwritten.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use super::Principal;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{0} already exists; refusing to overwrite a certificate authority")]
    CaExists(PathBuf),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Certificate {
        context: String,
        #[source]
        source: rcgen::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> PkiError {
    let context = context.into();
    move |source| PkiError::Io { context, source }
}

fn cert_err(context: impl Into<String>) -> impl FnOnce(rcgen::Error) -> PkiError {
    let context = context.into();
    move |source| PkiError::Certificate { context, source }
}

/// The files of a CA directory.
pub struct CaFiles {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl CaFiles {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
        }
    }
}

fn current_year() -> i32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Average Gregorian year; off by at most a day around New Year, which `validity` absorbs.
    1970 + (secs / 31_556_952) as i32
}

/// Valid from the start of last year (clock skew between hosts) for `years`.
fn validity(params: &mut CertificateParams, years: i32) {
    let year = current_year();
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + years, 1, 1);
}

fn random_serial(params: &mut CertificateParams) {
    let bytes = blake3::hash(format!("{:?}{}", SystemTime::now(), std::process::id()).as_bytes());
    let mut serial = bytes.as_bytes()[..16].to_vec();
    serial[0] &= 0x7f; // positive
    params.serial_number = Some(serial.into());
}

/// Writes `contents` to `path` durably: temp file, fsync, rename, fsync directory.
pub fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    let ctx = format!("write {}", path.display());
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(ctx.clone()))?;
    f.write_all(contents).map_err(io(ctx.clone()))?;
    f.sync_all().map_err(io(ctx.clone()))?;
    fs::rename(&tmp, path).map_err(io(ctx.clone()))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(ctx))?;
    Ok(())
}

/// Creates a CA and a server certificate in `dir` for `hostnames` (plus localhost,
/// 127.0.0.1 and ::1).
pub fn init_ca(dir: &Path, hostnames: &[String]) -> Result<CaFiles, PkiError> {
    let files = CaFiles::in_dir(dir);
    if files.ca_key.exists() || files.ca_cert.exists() {
        return Err(PkiError::CaExists(files.ca_cert));
    }
    fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;

    let ca_key = KeyPair::generate().map_err(cert_err("generate CA key"))?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "walvault CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut ca, 20);
    random_serial(&mut ca);
    let ca_cert = ca
        .self_signed(&ca_key)
        .map_err(cert_err("sign CA certificate"))?;
    write_file(&files.ca_key, ca_key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&files.ca_cert, ca_cert.pem().as_bytes(), 0o644)?;

    let issuer = Issuer::new(ca, ca_key);
    let mut names: Vec<String> = vec!["localhost".into()];
    names.extend(hostnames.iter().cloned());
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "walvault server");
    for name in names {
        params.subject_alt_names.push(match name.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                name.clone()
                    .try_into()
                    .map_err(cert_err(format!("hostname {name:?}")))?,
            ),
        });
    }
    for ip in ["127.0.0.1", "::1"] {
        if let Ok(ip) = ip.parse::<IpAddr>() {
            params.subject_alt_names.push(SanType::IpAddress(ip));
        }
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut params, 5);
    random_serial(&mut params);
    let key = KeyPair::generate().map_err(cert_err("generate server key"))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(cert_err("sign server certificate"))?;
    write_file(&files.server_key, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&files.server_cert, cert.pem().as_bytes(), 0o644)?;
    Ok(files)
}

/// Issues a client certificate for `principal`, signed by the CA in `ca_dir`; returns the
/// certificate and key in PEM.
pub fn issue_client(ca_dir: &Path, principal: &Principal) -> Result<(String, String), PkiError> {
    let files = CaFiles::in_dir(ca_dir);
    let ca_pem = fs::read_to_string(&files.ca_cert)
        .map_err(io(format!("read {}", files.ca_cert.display())))?;
    let key_pem = fs::read_to_string(&files.ca_key)
        .map_err(io(format!("read {}", files.ca_key.display())))?;
    let ca_key = KeyPair::from_pem(&key_pem)
        .map_err(cert_err(format!("parse {}", files.ca_key.display())))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)
        .map_err(cert_err(format!("parse {}", files.ca_cert.display())))?;

    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, principal.to_string());
    params.subject_alt_names.push(SanType::URI(
        principal
            .uri()
            .try_into()
            .map_err(cert_err("encode identity"))?,
    ));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut params, 2);
    random_serial(&mut params);
    let key = KeyPair::generate().map_err(cert_err("generate client key"))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(cert_err("sign client certificate"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_carry_the_principal() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), &["backup.example".into()]).unwrap();
        for p in [
            Principal::Admin,
            Principal::Agent("acme/db1".parse().unwrap()),
            Principal::Operator("acme".parse().unwrap()),
        ] {
            let (cert_pem, _key) = issue_client(dir.path(), &p).unwrap();
            let der = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
                .unwrap()
                .1
                .contents;
            assert_eq!(Principal::from_certificate(&der).unwrap(), p);
        }
        // The server certificate is no client identity.
        let pem = fs::read(dir.path().join("server.crt")).unwrap();
        let der = x509_parser::pem::parse_x509_pem(&pem).unwrap().1.contents;
        assert_eq!(
            Principal::from_certificate(&der),
            Err(super::super::AuthError::NoIdentity)
        );
    }

    #[test]
    fn never_overwrites_a_ca() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), &[]).unwrap();
        let before = fs::read(dir.path().join("ca.key")).unwrap();
        assert!(matches!(
            init_ca(dir.path(), &[]),
            Err(PkiError::CaExists(_))
        ));
        assert_eq!(fs::read(dir.path().join("ca.key")).unwrap(), before);
    }
}
