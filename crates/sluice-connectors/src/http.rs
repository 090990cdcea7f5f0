//! A minimal blocking HTTP/1.1 client (plain http, one request per connection): what the
//! schema registry client and the `sluice` CLI's server calls need, without an HTTP stack.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use sluice_types::{Result, SluiceError};

/// An `http://host[:port][/path]` address, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl {
    /// Host name or address.
    pub host: String,
    /// Port (80 when not given).
    pub port: u16,
    /// Path prefix without a trailing `/` (may be empty).
    pub path: String,
}

impl HttpUrl {
    /// Parses an address; fails on anything but `http://`.
    pub fn parse(url: &str) -> Result<Self> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            SluiceError::user(format!(
                "address `{url}` must start with http:// (https is not supported yet)"
            ))
        })?;
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
            None => (authority, 80),
        };
        if host.is_empty() {
            return Err(SluiceError::user(format!("address `{url}` has no host")));
        }
        Ok(Self {
            host: host.to_string(),
            port,
            path: path.to_string(),
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
        let mut s = TcpStream::connect(&addr).map_err(|e| fail("cannot connect").with_source(e))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
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
        let read = |s: &mut TcpStream, buf: &mut [u8]| {
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
        assert!(HttpUrl::parse("https://x:1").is_err());
        assert!(HttpUrl::parse("http://:1").is_err());
        assert!(HttpUrl::parse("http://x:port").is_err());
    }

    #[test]
    fn chunked_answers_are_joined() {
        assert_eq!(dechunk("4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n"), "{\"a\":1}");
    }
}
