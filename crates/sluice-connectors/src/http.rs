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
    /// Refuse to connect to loopback, private, link-local and other non-public
    /// addresses, whatever the name resolves to when the request is made.
    pub public_only: bool,
}

/// Whether `ip` is an address of the public internet: not loopback, private (RFC 1918,
/// unique local), link-local (cloud metadata services live there), shared (CGNAT),
/// unspecified, multicast, broadcast or documentation; IPv4 inside IPv6 as its IPv4.
pub fn is_public(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && v6.segments()[1] == 0x0db8)
        }
    }
}

/// Resolves as usual, then keeps public addresses only: checked on the addresses the
/// connection will use, so a name that changes its answer (DNS rebinding) cannot slip
/// through.
#[derive(Debug)]
struct PublicOnly;

impl ureq::unversioned::resolver::Resolver for PublicOnly {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> std::result::Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        let all = ureq::unversioned::resolver::DefaultResolver::default()
            .resolve(uri, config, timeout)?;
        let mut kept = self.empty();
        for a in all.iter().filter(|a| is_public(a.ip())) {
            kept.push(*a);
        }
        if kept.is_empty() {
            return Err(ureq::Error::Other(
                format!(
                    "{} resolves only to non-public addresses ({}), which this server does not call",
                    uri.host().unwrap_or_default(),
                    all.iter().map(|a| a.ip().to_string()).collect::<Vec<_>>().join(", ")
                )
                .into(),
            ));
        }
        Ok(kept)
    }
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
/// into an error), the whole call bounded by `global` (`None`: an answer that streams for
/// as long as it has something to say; 30 seconds for ordinary calls), connecting within
/// 30 seconds either way.
fn agent_with(
    roots: &[Certificate<'static>],
    public_only: bool,
    global: Option<Duration>,
) -> ureq::Agent {
    let tls = TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .root_certs(RootCerts::new_with_certs(roots))
        .build();
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .timeout_global(global)
        .timeout_connect(Some(Duration::from_secs(30)))
        .tls_config(tls)
        .build();
    match public_only {
        true => ureq::Agent::with_parts(
            config,
            ureq::unversioned::transport::DefaultConnector::default(),
            PublicOnly,
        ),
        false => config.new_agent(),
    }
}

/// Answers read beyond this size are cut (a schema, an error message: never more).
pub const MAX_ANSWER_BYTES: u64 = 4 << 20;

impl HttpUrl {
    /// Trusts the PEM certificates of `path` too (a private CA), for https; checked now.
    pub fn with_ca_file(mut self, path: impl Into<std::path::PathBuf>) -> Result<Self> {
        let path = path.into();
        trusted_roots(Some(&path))?;
        self.ca_file = Some(path);
        Ok(self)
    }

    /// Connects only to public addresses (see [`is_public`]); a literal non-public
    /// address fails now, a name that resolves to one when the request is made.
    pub fn public_only(mut self) -> Result<Self> {
        let literal = self.host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<std::net::IpAddr>()
            && !is_public(ip)
        {
            return Err(SluiceError::user(format!(
                "{ip} is not a public address, which this server does not call"
            )));
        }
        if self.host.eq_ignore_ascii_case("localhost") || self.host.ends_with(".localhost") {
            return Err(SluiceError::user(format!(
                "{} is this machine, which this server does not call",
                self.host
            )));
        }
        self.public_only = true;
        Ok(self)
    }

    /// Parses an address; fails on anything but `http://` and `https://`, and on
    /// anything that could smuggle a header or a second request: control characters,
    /// spaces, non-ASCII, user information (`user@`), a host that is not a name or an
    /// address.
    pub fn parse(url: &str) -> Result<Self> {
        if let Some(c) = url
            .chars()
            .find(|c| c.is_ascii_control() || c.is_whitespace() || !c.is_ascii())
        {
            return Err(SluiceError::user(format!(
                "address {url:?} contains {c:?}: control characters, spaces and non-ASCII characters are not allowed (percent-encode them)"
            )));
        }
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
        let name = host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
        let v6 = host.starts_with('[')
            && host.ends_with(']')
            && host[1..host.len() - 1]
                .parse::<std::net::Ipv6Addr>()
                .is_ok();
        if !(name || v6) {
            return Err(SluiceError::user(format!(
                "address `{url}`: `{host}` is not a host name or an IP address"
            )));
        }
        if path.contains(['"', '<', '>', '\\', '^', '`', '{', '|', '}']) {
            return Err(SluiceError::user(format!(
                "address `{url}` has characters a URL path cannot have (percent-encode them)"
            )));
        }
        Ok(Self {
            tls,
            host: host.to_string(),
            port,
            path: path.to_string(),
            ca_file: None,
            public_only: false,
        })
    }

    /// Sends one request to `path` (appended to the address's own path) and returns the
    /// status and body of the answer (at most [`MAX_ANSWER_BYTES`]).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<(u16, String)> {
        self.exchange(method, path, body, headers, true)
    }

    /// Sends one request and returns the answer's status and its body as it arrives,
    /// for answers that stream (no bound on the call's length).
    pub fn stream(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<(u16, Box<dyn std::io::Read + Send>)> {
        let resp = self.send(method, path, body, headers, None)?;
        let status = resp.status().as_u16();
        Ok((status, Box::new(resp.into_body().into_reader())))
    }

    /// Sends one request and returns only the answer's status: its body is not read.
    pub fn status_of(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<u16> {
        self.exchange(method, path, body, headers, false)
            .map(|(s, _)| s)
    }

    /// Sends one request, the whole call bounded by `global` (connecting always is).
    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
        global: Option<Duration>,
    ) -> Result<ureq::http::Response<ureq::Body>> {
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
        agent_with(&roots, self.public_only, global)
            .run(req)
            .map_err(|e| fail("no answer").with_source(e))
    }

    fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
        read_answer: bool,
    ) -> Result<(u16, String)> {
        let mut resp = self.send(method, path, body, headers, Some(Duration::from_secs(30)))?;
        let status = resp.status().as_u16();
        if !read_answer {
            return Ok((status, String::new()));
        }
        let addr = format!("{}:{}", self.host, self.port);
        let fail = |what: &str| SluiceError::external(format!("{addr}: {method} {path}: {what}"));
        let text = resp
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
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
        // Nothing that could end a header line or start another request.
        for bad in [
            "http://h/x\r\nX-Injected: 1",
            "http://h\r\n/x",
            "http://h/x y",
            "http://user@h/x",
            "http://h/\u{e9}",
            "http://h/x\"",
        ] {
            assert!(HttpUrl::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(HttpUrl::parse("http://[::1]:8/a").unwrap().port, 8);
    }

    #[test]
    fn only_public_addresses_when_asked() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
        assert!(
            HttpUrl::parse("http://127.0.0.1:9/")
                .unwrap()
                .public_only()
                .is_err()
        );
        assert!(
            HttpUrl::parse("http://localhost:9/")
                .unwrap()
                .public_only()
                .is_err()
        );
        // A name is checked on what it resolves to, when the request is made.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mut u = HttpUrl::parse(&format!("http://localhost:{port}/")).unwrap();
        u.public_only = true;
        let err = u.request("POST", "", Some("{}"), &[]).unwrap_err();
        assert!(err.report().contains("non-public"), "{}", err.report());
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
