//! Which addresses a webhook may reach.
//!
//! A webhook URL is chosen by a user, and D sends to it from inside the platform, where
//! every app listens on loopback behind its sidecar and the cloud's metadata service
//! answers on a link-local address. So a webhook must name a public address: one that
//! is not loopback, private, link-local, unspecified, multicast, broadcast, shared
//! (CGNAT) or otherwise reserved, in either IPv4 or any IPv6 form that carries an IPv4
//! address. The rule is applied twice: at registration (to the literal address, or to
//! every address the name resolves to), and at delivery by the HTTP client's resolver,
//! which hands the connector only the addresses that pass, so a name that resolves
//! differently between the two checks (DNS rebinding) still cannot reach inside.
//!
//! Development and tests deliver to receivers on 127.0.0.1: `WEBHOOK_ALLOW_NETS` names
//! such networks explicitly; nothing is allowed by default.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Networks a webhook may reach although they are not public (`WEBHOOK_ALLOW_NETS`:
/// comma-separated CIDRs or addresses; empty by default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedNets(Vec<IpNet>);

impl AllowedNets {
    /// `10.1.0.0/16,127.0.0.1` into networks; an empty string allows nothing extra.
    pub fn parse(raw: &str) -> Result<Self, String> {
        raw.split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| format!("`{entry}` is not a CIDR or an IP address"))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }
}

impl FromStr for AllowedNets {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        Self::parse(raw)
    }
}

/// The IPv4 networks no webhook may reach: "this network", private, shared (CGNAT),
/// loopback, link-local, IETF protocol assignments, documentation, benchmarking,
/// reserved and broadcast.
const BLOCKED_V4: &[(Ipv4Addr, u8)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8),
    (Ipv4Addr::new(10, 0, 0, 0), 8),
    (Ipv4Addr::new(100, 64, 0, 0), 10),
    (Ipv4Addr::new(127, 0, 0, 0), 8),
    (Ipv4Addr::new(169, 254, 0, 0), 16),
    (Ipv4Addr::new(172, 16, 0, 0), 12),
    (Ipv4Addr::new(192, 0, 0, 0), 24),
    (Ipv4Addr::new(192, 0, 2, 0), 24),
    (Ipv4Addr::new(192, 88, 99, 0), 24),
    (Ipv4Addr::new(192, 168, 0, 0), 16),
    (Ipv4Addr::new(198, 18, 0, 0), 15),
    (Ipv4Addr::new(198, 51, 100, 0), 24),
    (Ipv4Addr::new(203, 0, 113, 0), 24),
    (Ipv4Addr::new(224, 0, 0, 0), 4),
    (Ipv4Addr::new(240, 0, 0, 0), 4),
];

/// The IPv6 networks no webhook may reach, besides forms carrying an IPv4 address
/// (handled by [`embedded_v4`]): unspecified, loopback, local-use IPv4/IPv6
/// translation (`64:ff9b:1::/48`, which a site's NAT64 maps onto its own IPv4
/// addresses at a prefix length of its choosing), discard, documentation, unique
/// local, link-local, site-local and multicast.
const BLOCKED_V6: &[(Ipv6Addr, u8)] = &[
    (Ipv6Addr::UNSPECIFIED, 128),
    (Ipv6Addr::LOCALHOST, 128),
    (Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48),
    (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64),
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32),
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10),
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),
];

/// The IPv4 address an IPv6 address stands for, where it stands for one: IPv4-mapped
/// (`::ffff:a.b.c.d`), IPv4-translated (`::ffff:0:a.b.c.d`), IPv4-compatible
/// (`::a.b.c.d`), NAT64 (`64:ff9b::/96`), 6to4
/// (`2002::/16`) and Teredo's obfuscated client (`2001::/32`). A connection to any of
/// these can end at the IPv4 address, so that address must pass the IPv4 rule.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(low),
        [0, 0, 0, 0, 0xffff, 0, _, _] => Some(low),
        [0, 0, 0, 0, 0, 0, _, _] => Some(low),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low),
        [0x2002, a, b, ..] => Some(Ipv4Addr::new(
            (a >> 8) as u8,
            a as u8,
            (b >> 8) as u8,
            b as u8,
        )),
        [0x2001, 0, ..] => Some(Ipv4Addr::from(!u32::from(low))),
        _ => None,
    }
}

fn v4_is_public(ip: Ipv4Addr) -> bool {
    !BLOCKED_V4
        .iter()
        .any(|&(net, len)| Ipv4Net::new(net, len).is_ok_and(|net| net.contains(&ip)))
}

/// Whether `ip` is an address on the public internet, by the rules above.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4_is_public(v4),
        IpAddr::V6(v6) => {
            // `::` and `::1` read as 0.0.0.0 and 0.0.0.1, which "this network" blocks.
            if let Some(v4) = embedded_v4(v6) {
                return v4_is_public(v4);
            }
            !BLOCKED_V6
                .iter()
                .any(|&(net, len)| Ipv6Net::new(net, len).is_ok_and(|net| net.contains(&v6)))
        }
    }
}

/// How long registration waits for a webhook's host to resolve.
const LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Registration's name lookups at once, per process. Each holds a blocking thread until
/// the system's resolver gives up, which [`LOOKUP_TIMEOUT`] does not shorten: names
/// that never answer, sent in a flood, would otherwise take every blocking thread (the
/// deliveries' lookups and SMTP's among them).
pub const LOOKUPS_AT_ONCE: usize = 16;

/// What a webhook may reach: public addresses, and the allowed networks.
#[derive(Debug, Clone)]
pub struct Policy {
    allowed: AllowedNets,
    lookups: Arc<tokio::sync::Semaphore>,
}

impl Default for Policy {
    fn default() -> Self {
        Self::new(AllowedNets::default())
    }
}

impl Policy {
    pub fn new(allowed: AllowedNets) -> Self {
        Self {
            allowed,
            lookups: Arc::new(tokio::sync::Semaphore::new(LOOKUPS_AT_ONCE)),
        }
    }

    /// Whether a webhook may connect to `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            // A mapped address connects to its IPv4 address: judge that one, so an
            // allowed IPv4 network is allowed in either spelling.
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.allowed.contains(ip) || is_public(ip)
    }

    /// Checks a URL a user asks to register: http(s), no userinfo, a host that is an
    /// address this policy permits or a name every address of which it permits (a
    /// name that does not resolve now passes; deliveries check what it resolves to).
    /// Returns the URL as it will be stored (normalised by the URL parser).
    pub async fn vet(&self, raw: &str) -> Result<Url, String> {
        let url = Url::parse(raw).map_err(|e| format!("not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("the scheme must be http or https".to_owned());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("the URL must not carry a user name or password".to_owned());
        }
        let port = url.port_or_known_default().unwrap_or(80);
        match url.host() {
            None => return Err("the URL must name a host".to_owned()),
            Some(url::Host::Ipv4(ip)) => self.check(IpAddr::V4(ip))?,
            Some(url::Host::Ipv6(ip)) => self.check(IpAddr::V6(ip))?,
            Some(url::Host::Domain(name)) => self.vet_name(name.to_owned(), port).await?,
        }
        Ok(url)
    }

    /// Refuses a name that resolves now to an address this policy does not permit. A
    /// slow resolver must not hold the request open for as long as the system's
    /// resolver retries, and a name that does not resolve now is taken: what it names
    /// can change, so every delivery checks the addresses it connects to
    /// ([`Policy::resolver`]), and this check only refuses early a name that names a
    /// refused address now. So is one that finds [`LOOKUPS_AT_ONCE`] under way.
    async fn vet_name(&self, name: String, port: u16) -> Result<(), String> {
        let Ok(turn) = Arc::clone(&self.lookups).try_acquire_owned() else {
            return Ok(());
        };
        let target = (name.clone(), port);
        // The turn is held by the thread, not the request: it ends when the lookup does.
        let lookup = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            std::net::ToSocketAddrs::to_socket_addrs(&target).map(Iterator::collect::<Vec<_>>)
        });
        if let Ok(Ok(Ok(addrs))) = tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
            // The name, never the address: the answer must not map the platform's
            // internal names to their addresses for a caller.
            if addrs.iter().any(|addr| !self.permits(addr.ip())) {
                return Err(format!(
                    "`{name}` resolves to an address that is not public"
                ));
            }
        }
        Ok(())
    }

    /// Checks the address of a URL whose host is an IP literal (the client's resolver
    /// sees only names); names are left to [`Policy::resolver`].
    pub fn check_literal(&self, url: &Url) -> Result<(), String> {
        match url.host() {
            Some(url::Host::Ipv4(ip)) => self.check(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.check(IpAddr::V6(ip)),
            Some(url::Host::Domain(_)) => Ok(()),
            None => Err("the URL names no host".to_owned()),
        }
    }

    fn check(&self, ip: IpAddr) -> Result<(), String> {
        if self.permits(ip) {
            Ok(())
        } else {
            Err(format!("{ip} is not a public address"))
        }
    }

    /// A resolver for the HTTP client that resolves with the system and passes on only
    /// the addresses this policy permits, so the connection goes to a vetted address.
    pub fn resolver(&self) -> Arc<VettingResolver> {
        Arc::new(VettingResolver {
            policy: self.clone(),
        })
    }
}

/// The delivery client's resolver: see [`Policy::resolver`].
pub struct VettingResolver {
    policy: Policy,
}

impl Resolve for VettingResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let vetted: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|addr| policy.permits(addr.ip()))
                .collect();
            if vetted.is_empty() {
                return Err(format!("`{host}` resolves to no public address").into());
            }
            Ok(Box::new(vetted.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn past_the_lookups_at_once_a_name_is_left_to_the_deliveries_check() {
        let policy = Policy::default();
        // localhost is loopback: refused when looked up.
        assert!(policy.vet("http://localhost:9/hook").await.is_err());
        let busy = Arc::clone(&policy.lookups)
            .acquire_many_owned(LOOKUPS_AT_ONCE as u32)
            .await
            .unwrap();
        assert!(policy.vet("http://localhost:9/hook").await.is_ok());
        // A literal needs no lookup: still refused.
        assert!(policy.vet("http://127.0.0.1:9/hook").await.is_err());
        drop(busy);
        assert!(policy.vet("http://localhost:9/hook").await.is_err());
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn internal_addresses_of_every_kind_are_not_public() {
        for s in [
            "127.0.0.1",
            "127.1.2.3",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b:1::a00:1",
            "64:ff9b:1:a00:1::",
            "::ffff:0:a00:1",
            "::ffff:0:7f00:1",
            "2002:7f00:1::",
        ] {
            assert!(!is_public(ip(s)), "{s}");
        }
    }

    #[test]
    fn public_addresses_are_public() {
        for s in [
            "93.184.216.34",
            "8.8.8.8",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(ip(s)), "{s}");
        }
    }

    #[test]
    fn allowed_networks_parse_from_cidrs_and_bare_addresses() {
        let nets = AllowedNets::parse(" 127.0.0.1, 10.1.0.0/16 ,::1").unwrap();
        assert!(nets.contains(ip("127.0.0.1")));
        assert!(nets.contains(ip("10.1.200.3")));
        assert!(!nets.contains(ip("127.0.0.2")));
        assert_eq!(AllowedNets::parse("").unwrap(), AllowedNets::default());
        assert!(AllowedNets::parse("localhost").is_err());
    }

    #[test]
    fn an_allowed_network_is_permitted_in_its_ipv4_mapped_form_too() {
        let policy = Policy::new(AllowedNets::parse("127.0.0.1").unwrap());
        assert!(policy.permits(ip("127.0.0.1")));
        assert!(policy.permits(ip("::ffff:127.0.0.1")));
        assert!(!policy.permits(ip("127.0.0.2")));
        assert!(!Policy::default().permits(ip("127.0.0.1")));
    }

    #[tokio::test]
    async fn registration_refuses_userinfo_other_schemes_and_internal_hosts() {
        let policy = Policy::default();
        for url in [
            "http://127.0.0.1:9002/internal/transfers",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::1]:9002/",
            "http://[::ffff:7f00:1]:9002/",
            "http://localhost:9002/",
            "http://2130706433/",
            "http://0x7f.1/",
            "https://user:pw@example.com/",
            "https://user@example.com/",
            "ftp://example.com/",
            "file:///etc/passwd",
            "not a url",
        ] {
            assert!(policy.vet(url).await.is_err(), "{url}");
        }
        assert!(policy.vet("https://93.184.216.34/hook").await.is_ok());
    }
}
