//! Which address a request comes from. Behind a reverse proxy every request arrives from the
//! proxy, so throttling by the peer would let one client lock every operator out; with the
//! proxy listed in `http.trusted_proxies`, the client is the nearest address in
//! `X-Forwarded-For` that is not a trusted proxy. Off by default: the header is then ignored,
//! since anyone can send it.

use std::net::IpAddr;

use actix_web::HttpRequest;
use ipnet::IpNet;

/// The proxies whose `X-Forwarded-For` is believed: addresses or networks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parses `10.0.0.0/8`, `192.168.1.5` or `::1` entries; the error names the entry.
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<TrustedProxies, String> {
        entries
            .into_iter()
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|e| {
                e.parse::<IpNet>()
                    .or_else(|_| e.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        format!(
                            "http.trusted_proxies: `{}` is not an IP address or network (such as 10.0.0.0/8)",
                            crate::domain::printable(e, 60)
                        )
                    })
            })
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }

    fn trusts(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        self.0.iter().any(|net| net.contains(&address))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// An IPv4 address mapped into IPv6 (`::ffff:10.0.0.1`) is the IPv4 address.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    }
}

/// Finds the client's address of a request.
#[derive(Debug, Clone, Default)]
pub struct ClientAddress {
    pub trusted: TrustedProxies,
}

impl ClientAddress {
    /// The peer, or — when the peer is a trusted proxy — the nearest untrusted address its
    /// `X-Forwarded-For` names (the proxy appends what it saw, so entries further left were
    /// written by the client and count for nothing).
    pub fn of(&self, request: &HttpRequest) -> IpAddr {
        let peer = request
            .peer_addr()
            .map_or(IpAddr::from([0, 0, 0, 0]), |a| canonical(a.ip()));
        if self.trusted.is_empty() || !self.trusted.trusts(peer) {
            return peer;
        }
        let forwarded: Vec<&str> = request
            .headers()
            .get_all("x-forwarded-for")
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        let mut client = peer;
        for entry in forwarded.iter().rev() {
            let Ok(address) = entry.trim().parse::<IpAddr>() else {
                break;
            };
            client = canonical(address);
            if !self.trusted.trusts(client) {
                break;
            }
        }
        client
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn from(peer: &str, forwarded: Option<&str>, trusted: &[&str]) -> IpAddr {
        let mut request = TestRequest::default().peer_addr(format!("{peer}:4000").parse().unwrap());
        if let Some(f) = forwarded {
            request = request.insert_header(("x-forwarded-for", f));
        }
        ClientAddress {
            trusted: TrustedProxies::parse(trusted.iter().copied()).unwrap(),
        }
        .of(&request.to_http_request())
    }

    #[test]
    fn forwarded_for_counts_only_from_a_trusted_proxy() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // Off by default: the header is anyone's to send.
        assert_eq!(from("10.0.0.2", Some("1.2.3.4"), &[]), ip("10.0.0.2"));
        // From a proxy not listed, likewise.
        assert_eq!(
            from("10.0.0.2", Some("1.2.3.4"), &["10.0.0.9"]),
            ip("10.0.0.2")
        );
        // The nearest untrusted address; what the client wrote further left is ignored.
        assert_eq!(
            from(
                "10.0.0.2",
                Some("6.6.6.6, 1.2.3.4, 10.0.0.7"),
                &["10.0.0.0/24"]
            ),
            ip("1.2.3.4")
        );
        // A junk entry stops the walk at the last address proxies vouched for.
        assert_eq!(
            from("10.0.0.2", Some("1.2.3.4, junk"), &["10.0.0.0/24"]),
            ip("10.0.0.2")
        );
        // Only proxies: the furthest proxy is the client.
        assert_eq!(
            from("10.0.0.2", Some("10.0.0.3"), &["10.0.0.0/24"]),
            ip("10.0.0.3")
        );
        assert_eq!(from("10.0.0.2", None, &["10.0.0.0/24"]), ip("10.0.0.2"));
    }

    #[test]
    fn a_bad_entry_is_named() {
        let err = TrustedProxies::parse(["10.0.0.0/8", "proxy.local"]).unwrap_err();
        assert!(err.contains("`proxy.local`"), "{err}");
        assert_eq!(
            TrustedProxies::parse(["127.0.0.1", " ::1 ", "fd00::/8"])
                .unwrap()
                .0
                .len(),
            3
        );
    }
}
