//! A minimal blocking HTTP/1.1 client (one request per connection, `http://` or
//! `https://` through rustls with the system's trusted certificates): what the schema
//! registry client, alert webhooks and the `sluice` CLI's server calls need, without an
//! HTTP stack.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sluice_types::{Result, SluiceError};

/// An `http[s]://host[:port][/path]` address, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl {
    /// Whether it is `https://`.
    pub tls: bool,
    /// Host name or address.
    pub host: String,
    /// Port (80, or 443 for https, when not given).
    pub port: u16,
    /// Path prefix without a trailing `/` (may be empty).
    pub path: String,
    /// Certificates (PEM) trusted besides the system's, for https.
    pub ca_file: Option<std::path::PathBuf>,
}

/// A connection, plain or TLS.
trait Conn: Read + Write {}
impl<T: Read + Write> Conn for T {}

/// The TLS settings trusting the system's certificates (and `ca_file`'s, if given).
fn tls_config(ca_file: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>> {
    static SYSTEM: OnceLock<std::result::Result<Arc<rustls::ClientConfig>, String>> =
        OnceLock::new();
    let build = |extra: Option<&std::path::Path>| -> std::result::Result<_, String> {
        let mut roots = rustls::RootCertStore::empty();
        // Certificates the system cannot parse are skipped, as browsers do.
        let found = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(found.certs);
        if let Some(path) = extra {
            use rustls::pki_types::pem::PemObject as _;
            let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(path)
                .and_then(|i| i.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("{} holds no PEM certificate", path.display()));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| format!("a certificate of {}: {e}", path.display()))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    };
    let r = match ca_file {
        None => SYSTEM.get_or_init(|| build(None)).clone(),
        Some(path) => build(Some(path)),
    };
    r.map_err(SluiceError::user)
}

impl HttpUrl {
    /// Trusts the PEM certificates of `path` too (a private CA), for https; checked now.
    pub fn with_ca_file(mut self, path: impl Into<std::path::PathBuf>) -> Result<Self> {
        let path = path.into();
        tls_config(Some(&path))?;
        self.ca_file = Some(path);
        Ok(self)
    }

    /// Parses an address; fails on anything but `http://` and `https://`.
    pub fn parse(url: &str) -> Result<Self> {
        let (tls, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
            (Some(r), _) => (false, r),
            (_, Some(r)) => (true, r),
            _ => {
                return Err(SluiceError::user(format!(
                    "address `{url}` must start with http:// or https://"
                )));
            }
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| SluiceError::user(format!("address `{url}` has a bad port")))?,
            ),
            None => (authority, if tls { 443 } else { 80 }),
        };
        if host.is_empty() {
            return Err(SluiceError::user(format!("address `{url}` has no host")));
        }
        Ok(Self {
            tls,
            host: host.to_string(),
            port,
            path: path.to_string(),
            ca_file: None,
        })
    }

    /// Sends one request to `path` (appended to the address's own path) and returns the
    /// status and body of the answer.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<(u16, String)> {
        let addr = format!("{}:{}", self.host, self.port);
        let fail = |what: &str| SluiceError::external(format!("{addr}: {method} {path}: {what}"));
        let tcp = TcpStream::connect(&addr).map_err(|e| fail("cannot connect").with_source(e))?;
        tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
        tcp.set_write_timeout(Some(Duration::from_secs(30)))?;
        let mut s: Box<dyn Conn> = match self.tls {
            false => Box::new(tcp),
            true => {
                let config = tls_config(self.ca_file.as_deref())?;
                let name = rustls::pki_types::ServerName::try_from(self.host.clone())
                    .map_err(|e| fail("not a TLS server name").with_source(e))?;
                let conn = rustls::ClientConnection::new(config, name)
                    .map_err(|e| fail("cannot start TLS").with_source(e))?;
                Box::new(rustls::StreamOwned::new(conn, tcp))
            }
        };
        let body = body.unwrap_or("");
        let mut req = format!(
            "{method} {}{path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.path,
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes())
            .map_err(|e| fail("cannot send").with_source(e))?;
        // Read the head, then exactly the body it announces: some servers keep the
        // connection open despite `Connection: close`.
        let mut resp = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        let read = |s: &mut Box<dyn Conn>, buf: &mut [u8]| {
            s.read(buf)
                .map_err(|e| fail("cannot read the answer").with_source(e))
        };
        let head_end = loop {
            if let Some(i) = find(&resp, b"\r\n\r\n") {
                break i + 4;
            }
            let n = read(&mut s, &mut buf)?;
            if n == 0 {
                return Err(fail("the answer is not HTTP"));
            }
            resp.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&resp[..head_end]).to_ascii_lowercase();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| fail("the answer has no status"))?;
        let length: Option<usize> = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok());
        let chunked = head.contains("transfer-encoding: chunked");
        loop {
            let body = &resp[head_end..];
            let complete = match (length, chunked) {
                (Some(n), _) => body.len() >= n,
                (None, true) => body.ends_with(b"0\r\n\r\n"),
                (None, false) => false,
            };
            if complete {
                break;
            }
            let n = read(&mut s, &mut buf)?;
            if n == 0 {
                break;
            }
            resp.extend_from_slice(&buf[..n]);
        }
        let body = String::from_utf8_lossy(&resp[head_end..]);
        let payload = match chunked {
            true => dechunk(&body),
            false => body.into_owned(),
        };
        Ok((status, payload))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The body of a chunked HTTP answer.
fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked() {
        let u = HttpUrl::parse("http://localhost:8081/registry/").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("localhost", 8081, "/registry")
        );
        assert_eq!(HttpUrl::parse("http://h").unwrap().port, 80);
        let s = HttpUrl::parse("https://hooks.example.com/services/T/B").unwrap();
        assert_eq!(
            (s.tls, s.port, s.path.as_str()),
            (true, 443, "/services/T/B")
        );
        assert!(HttpUrl::parse("ftp://x:1").is_err());
        assert!(HttpUrl::parse("http://:1").is_err());
        assert!(HttpUrl::parse("http://x:port").is_err());
    }

    #[test]
    fn chunked_answers_are_joined() {
        assert_eq!(dechunk("4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n"), "{\"a\":1}");
    }
}
