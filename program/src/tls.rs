//! `--tls-cert/--tls-key/--tls-ca`: the same three options on every program of the pool
//! (RFC 5355 authentication; SECURITY.md tells how to make the files).

use std::path::PathBuf;

use anyhow::Context;
use rserpool::transport::{TlsConfig, TlsFiles};

/// A pool member's credentials, for associations with registrars.
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsArgs {
    /// TLS with registrars: this member's certificate chain (PEM), signed by the pool CA.
    /// Needs --tls-key and --tls-ca; without the three, associations are plain TCP.
    #[arg(long, value_name = "FILE", requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// TLS: the private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires_all = ["tls_cert", "tls_ca"])]
    pub tls_key: Option<PathBuf>,
    /// TLS: the pool CA's certificate (PEM); peers must present a certificate it signed.
    #[arg(long, value_name = "FILE", requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,
}

impl TlsArgs {
    fn files(&self) -> Option<TlsFiles> {
        Some(TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            ca: self.tls_ca.clone()?,
        })
    }

    /// A registrar connecting to its ENRP peers: the same credentials on the connecting side;
    /// a peer's certificate must name the address connected to.
    pub fn client(&self) -> anyhow::Result<Option<TlsConfig>> {
        let Some(files) = self.files() else {
            return Ok(None);
        };
        TlsConfig::client(&files)
            .map(Some)
            .context("loading the TLS credentials")
    }

    /// The registrar's side: every association must present a certificate of the pool.
    pub fn server(&self) -> anyhow::Result<Option<TlsConfig>> {
        let Some(files) = self.files() else {
            return Ok(None);
        };
        TlsConfig::server(&files)
            .map(Some)
            .context("loading the TLS credentials")
    }
}

/// [`TlsArgs`] of a connecting member (pool element, pool user), which may expect another
/// name than the registrar's address in its certificate.
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsClientArgs {
    #[command(flatten)]
    pub files: TlsArgs,
    /// TLS: the name the registrars' certificates carry (DNS name or IP address)
    /// [default: the address connected to].
    #[arg(long, value_name = "NAME", requires = "tls_cert")]
    pub tls_server_name: Option<String>,
}

impl TlsClientArgs {
    /// The connecting side's configuration, if TLS was asked for.
    pub fn client(&self) -> anyhow::Result<Option<TlsConfig>> {
        let Some(files) = self.files.files() else {
            return Ok(None);
        };
        let config = TlsConfig::client(&files).context("loading the TLS credentials")?;
        let config = match &self.tls_server_name {
            Some(name) => config.with_server_name(name)?,
            None => config,
        };
        Ok(Some(config))
    }
}
