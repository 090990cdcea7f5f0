//! Outgoing HTTP for the schema registry client, alert webhooks and the `sluice` CLI's
//! server calls: blocking requests through `ureq`, `https://` through rustls trusting the
//! system's certificates (and a private CA's, when one is given).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};

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

/// The certificates an https request trusts: the system's (those it can parse, as
/// browsers do), and `ca_file`'s PEM certificates if given.
fn trusted_roots(ca_file: Option<&std::path::Path>) -> Result<Arc<Vec<Certificate<'static>>>> {
    static SYSTEM: OnceLock<Arc<Vec<Certificate<'static>>>> = OnceLock::new();
    let system = SYSTEM.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        Arc::new(
            found
                .certs
                .iter()
                .map(|c| Certificate::from_der(c.as_ref()).to_owned())
                .collect(),
        )
    });
    let Some(path) = ca_file else {
        return Ok(Arc::clone(system));
    };
    use rustls::pki_types::pem::PemObject as _;
    let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| {
            SluiceError::user(format!(
                "cannot read certificates from {}: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(SluiceError::user(format!(
            "{} holds no PEM certificate",
            path.display()
        )));
    }
    let mut all: Vec<Certificate<'static>> = system.as_ref().clone();
    all.extend(
        certs
            .iter()
            .map(|c| Certificate::from_der(c.as_ref()).to_owned()),
    );
    Ok(Arc::new(all))
}

/// An agent for one address: no redirects followed, every status answered (not turned
/// into an error), 30 seconds at most per request.
fn agent(roots: &[Certificate<'static>]) -> ureq::Agent {
    let tls = TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .root_certs(RootCerts::new_with_certs(roots))
        .build();
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(30)))
        .tls_config(tls)
        .build()
        .new_agent()
}

impl HttpUrl {
    /// Trusts the PEM certificates of `path` too (a private CA), for https; checked now.
    pub fn with_ca_file(mut self, path: impl Into<std::path::PathBuf>) -> Result<Self> {
        let path = path.into();
        trusted_roots(Some(&path))?;
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
        let scheme = if self.tls { "https" } else { "http" };
        let uri = format!("{scheme}://{addr}{}{path}", self.path);
        let mut req = ureq::http::Request::builder().method(method).uri(&uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(body.unwrap_or("").to_string())
            .map_err(|e| fail("not a valid request").with_source(e))?;
        let roots = match self.tls {
            true => trusted_roots(self.ca_file.as_deref())?,
            false => Arc::new(Vec::new()),
        };
        let mut resp = agent(&roots)
            .run(req)
            .map_err(|e| fail("no answer").with_source(e))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| fail("cannot read the answer").with_source(e))?;
        Ok((status, text))
    }
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

    /// A one-shot HTTP server on loopback answering `answer`; returns its address and
    /// the request it received.
    fn serve_once(answer: &'static str) -> (String, std::thread::JoinHandle<String>) {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}/base", l.local_addr().unwrap());
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&got).contains("hello") {
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(answer.as_bytes()).unwrap();
            String::from_utf8_lossy(&got).into_owned()
        });
        (addr, h)
    }

    #[test]
    fn a_request_sends_its_headers_and_body_and_returns_any_status() {
        let (addr, h) = serve_once(
            "HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n",
        );
        let (status, body) = HttpUrl::parse(&addr)
            .unwrap()
            .request("POST", "/x", Some("hello"), &[("X-Test", "yes")])
            .unwrap();
        assert_eq!((status, body.as_str()), (404, "{\"a\":1}"));
        let req = h.join().unwrap().to_ascii_lowercase();
        assert!(req.starts_with("post /base/x http/1.1"), "{req}");
        assert!(req.contains("x-test: yes"), "{req}");
    }

    #[test]
    fn an_unreachable_address_is_an_external_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = HttpUrl::parse(&format!("http://127.0.0.1:{port}"))
            .unwrap()
            .request("GET", "/", None, &[])
            .unwrap_err();
        assert!(err.to_string().contains("no answer"), "{err}");
    }
}
