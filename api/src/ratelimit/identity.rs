//! Who a request is counted against: its API key when it carries one
//! (`Authorization: Bearer <key>` or `X-API-Key: <key>`), otherwise its
//! client address. The key itself never leaves this function: buckets are
//! named by its SHA-256. IPv6 clients are grouped by /64, the block one
//! host usually holds. `X-Forwarded-For` is honoured only when the
//! operator says a proxy in front of the service sets it, and then its
//! last address (the one that proxy appended) is taken.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::http::header::AUTHORIZATION;
use axum::http::HeaderMap;
use sha2::{Digest, Sha256};

/// A rate-limited identity; [`Identity::bucket`] names its bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// Hex SHA-256 of the API key.
    ApiKey(String),
    Ip(IpAddr),
    /// No key and no known peer (only when served without connect info).
    Unknown,
}

impl Identity {
    /// The bucket's name, in Redis and in the local limiter.
    pub fn bucket(&self) -> String {
        match self {
            Identity::ApiKey(hash) => format!("analytics:ratelimit:key:{hash}"),
            Identity::Ip(ip) => format!("analytics:ratelimit:ip:{ip}"),
            Identity::Unknown => "analytics:ratelimit:unknown".to_owned(),
        }
    }
}

/// The identity of a request with `headers` from `peer`.
pub fn identify(
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    trust_forwarded_for: bool,
) -> Identity {
    if let Some(key) = api_key(headers) {
        return Identity::ApiKey(hex_sha256(key));
    }
    let forwarded = trust_forwarded_for
        .then(|| forwarded_for(headers))
        .flatten();
    match forwarded.or(peer.map(|p| p.ip())) {
        Some(ip) => Identity::Ip(group(ip)),
        None => Identity::Unknown,
    }
}

/// The API key a request presents, if any.
pub fn api_key(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then_some(token.trim())
        });
    let header = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    bearer
        .filter(|k| !k.is_empty())
        .or(header.filter(|k| !k.is_empty()))
}

/// The last address of `X-Forwarded-For` (over all its header lines).
fn forwarded_for(headers: &HeaderMap) -> Option<IpAddr> {
    let last_line = headers.get_all("x-forwarded-for").iter().next_back()?;
    let last = last_line.to_str().ok()?.rsplit(',').next()?.trim();
    last.parse::<IpAddr>()
        .ok()
        .or_else(|| last.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

/// IPv4 as is (IPv4-mapped IPv6 unwrapped), IPv6 by /64.
fn group(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

fn hex_sha256(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        h
    }

    fn peer(s: &str) -> Option<SocketAddr> {
        Some(s.parse().expect("socket address"))
    }

    #[test]
    fn api_key_wins_and_is_hashed() {
        let by_bearer = identify(
            &headers(&[("authorization", "Bearer s3cret")]),
            peer("10.0.0.1:5000"),
            false,
        );
        let by_header = identify(
            &headers(&[("x-api-key", "s3cret")]),
            peer("10.0.0.2:5000"),
            false,
        );
        assert_eq!(by_bearer, by_header, "same key, same bucket");
        let bucket = by_bearer.bucket();
        assert!(!bucket.contains("s3cret"), "{bucket}");
        // SHA-256("s3cret")
        assert_eq!(
            bucket,
            format!("analytics:ratelimit:key:{}", hex_sha256("s3cret"))
        );
        assert_eq!(hex_sha256("abc").len(), 64);
        assert_eq!(
            hex_sha256("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            identify(&headers(&[("authorization", "bearer  k1 ")]), None, false),
            Identity::ApiKey(hex_sha256("k1"))
        );
    }

    #[test]
    fn no_key_means_the_peer_address() {
        for h in [
            headers(&[]),
            headers(&[("authorization", "Basic dXNlcjpwdw==")]),
            headers(&[("authorization", "Bearer ")]),
            headers(&[("x-api-key", "  ")]),
        ] {
            assert_eq!(
                identify(&h, peer("192.0.2.7:40000"), false),
                Identity::Ip("192.0.2.7".parse().expect("ip")),
                "{h:?}"
            );
        }
        assert_eq!(identify(&headers(&[]), None, false), Identity::Unknown);
    }

    #[test]
    fn forwarded_for_only_when_trusted_and_last_hop() {
        let h = headers(&[
            ("x-forwarded-for", "1.1.1.1, 2.2.2.2"),
            ("x-forwarded-for", "203.0.113.9"),
        ]);
        assert_eq!(
            identify(&h, peer("10.0.0.1:1"), false),
            Identity::Ip("10.0.0.1".parse().expect("ip"))
        );
        assert_eq!(
            identify(&h, peer("10.0.0.1:1"), true),
            Identity::Ip("203.0.113.9".parse().expect("ip"))
        );
        let garbage = headers(&[("x-forwarded-for", "not-an-ip")]);
        assert_eq!(
            identify(&garbage, peer("10.0.0.1:1"), true),
            Identity::Ip("10.0.0.1".parse().expect("ip"))
        );
    }

    #[test]
    fn ipv6_is_grouped_by_64() {
        let a = identify(&headers(&[]), peer("[2001:db8:1:2:aaaa::1]:1"), false);
        let b = identify(&headers(&[]), peer("[2001:db8:1:2:bbbb::9]:1"), false);
        assert_eq!(a, b);
        assert_eq!(a.bucket(), "analytics:ratelimit:ip:2001:db8:1:2::");
        let mapped = identify(&headers(&[]), peer("[::ffff:192.0.2.1]:1"), false);
        assert_eq!(mapped, Identity::Ip("192.0.2.1".parse().expect("ip")));
    }
}
