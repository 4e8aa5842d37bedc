//! Small subnets for build networks, from habitus's own address pool.
//!
//! Docker's default address pools hold about 30 networks of its own size
//! (a /16 or /20 each); a secrets build needs only the gateway and its
//! build containers. So each build network gets a /28 (14 addresses) from
//! `--network-pool` (default [`DEFAULT_POOL`], outside Docker's defaults):
//! 4096 builds fit in the default /16. A subnet is skipped when a network
//! of the daemon or a route of this host overlaps it; a race with another
//! habitus creating the same subnet is retried with the next one.

use std::net::Ipv4Addr;

/// The default pool: not among Docker's default pools (172.17–31.0.0/16,
/// 192.168.0.0/16) nor the common 10.0.0.0/16 and 10.96–10.244 ranges of
/// cloud VPCs and Kubernetes.
pub const DEFAULT_POOL: &str = "10.213.0.0/16";

/// The size of one build network.
pub const PREFIX: u8 = 28;

/// An IPv4 network: address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    pub addr: u32,
    pub prefix: u8,
}

impl Net {
    /// Parses `10.213.0.0/16` (host bits must be zero).
    pub fn parse(text: &str) -> Result<Net, String> {
        let (addr, prefix) = text
            .split_once('/')
            .ok_or_else(|| format!("`{text}` is not an IPv4 CIDR such as `{DEFAULT_POOL}`"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("`{text}` is not an IPv4 CIDR such as `{DEFAULT_POOL}`"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("`{text}`: the prefix length must be 0 to 32"))?;
        let net = Net {
            addr: u32::from(addr),
            prefix,
        };
        if net.addr & !net.mask() != 0 {
            return Err(format!(
                "`{text}` has host bits set; did you mean `{}`?",
                Net {
                    addr: net.addr & net.mask(),
                    prefix
                }
            ));
        }
        Ok(net)
    }

    fn mask(self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }

    /// Whether the two networks share an address.
    pub fn overlaps(self, other: Net) -> bool {
        let mask = self.mask() & other.mask();
        self.addr & mask == other.addr & mask
    }
}

impl std::fmt::Display for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.addr), self.prefix)
    }
}

/// Where build networks come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// /28s from this network.
    Subnets(Net),
    /// `--network-pool docker`: let Docker choose (from its own pools).
    Docker,
}

impl Default for Pool {
    fn default() -> Pool {
        Pool::parse(DEFAULT_POOL).expect("valid default pool")
    }
}

impl Pool {
    /// Parses `--network-pool`: a CIDR of /28 or larger, or `docker`.
    pub fn parse(text: &str) -> Result<Pool, String> {
        if text == "docker" {
            return Ok(Pool::Docker);
        }
        let net = Net::parse(text)?;
        if net.prefix > PREFIX {
            return Err(format!(
                "`{text}` is smaller than one build network (a /{PREFIX})"
            ));
        }
        Ok(Pool::Subnets(net))
    }

    /// The pool's /28s, starting at the `start`-th (modulo their count)
    /// and wrapping around; none for [`Pool::Docker`].
    pub fn candidates(self, start: u64) -> Vec<Net> {
        let Pool::Subnets(net) = self else {
            return Vec::new();
        };
        let count = 1u64 << (PREFIX - net.prefix);
        let size = 1u64 << (32 - PREFIX);
        (0..count)
            .map(|i| {
                let n = (start.wrapping_add(i)) % count;
                Net {
                    addr: net.addr + (n * size) as u32,
                    prefix: PREFIX,
                }
            })
            .collect()
    }
}

/// The destinations of this host's IPv4 routes (the default route
/// excluded), from `/proc/net/route`.
pub fn host_routes() -> Vec<Net> {
    let Ok(table) = std::fs::read_to_string("/proc/net/route") else {
        return Vec::new();
    };
    // `Iface Destination Gateway Flags RefCnt Use Metric Mask …`, the
    // addresses as little-endian hex.
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let dest = u32::from_str_radix(fields.get(1)?, 16).ok()?.swap_bytes();
            let mask = u32::from_str_radix(fields.get(7)?, 16).ok()?.swap_bytes();
            (mask != 0).then_some(Net {
                addr: dest & mask,
                prefix: mask.count_ones() as u8,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_pool_holds_4096_networks_outside_dockers_pools() {
        let candidates = Pool::default().candidates(0);
        assert_eq!(candidates.len(), 4096);
        assert_eq!(candidates[0].to_string(), "10.213.0.0/28");
        assert_eq!(candidates[1].to_string(), "10.213.0.16/28");
        assert_eq!(candidates[4095].to_string(), "10.213.255.240/28");
        for docker in [
            "172.17.0.0/16",
            "172.31.0.0/16",
            "192.168.0.0/16",
            "10.0.0.0/16",
        ] {
            let docker = Net::parse(docker).unwrap();
            assert!(candidates.iter().all(|c| !c.overlaps(docker)));
        }
        // Starting elsewhere wraps around.
        let from = Pool::default().candidates(4095);
        assert_eq!(from[0].to_string(), "10.213.255.240/28");
        assert_eq!(from[1].to_string(), "10.213.0.0/28");
    }

    #[test]
    fn overlaps_either_way() {
        let big = Net::parse("10.213.0.0/16").unwrap();
        let small = Net::parse("10.213.4.16/28").unwrap();
        let other = Net::parse("10.214.0.0/28").unwrap();
        assert!(big.overlaps(small) && small.overlaps(big));
        assert!(!big.overlaps(other));
        assert!(Net::parse("0.0.0.0/0").unwrap().overlaps(other));
    }

    #[test]
    fn bad_pools_are_explained() {
        assert_eq!(Pool::parse("docker"), Ok(Pool::Docker));
        assert_eq!(
            Pool::parse("10.0.0.1/24").unwrap_err(),
            "`10.0.0.1/24` has host bits set; did you mean `10.0.0.0/24`?"
        );
        assert_eq!(
            Pool::parse("10.0.0.0/29").unwrap_err(),
            "`10.0.0.0/29` is smaller than one build network (a /28)"
        );
        assert!(Pool::parse("fd00::/64")
            .unwrap_err()
            .contains("not an IPv4 CIDR"));
        assert!(Pool::parse("10.0.0.0/33").unwrap_err().contains("0 to 32"));
        assert_eq!(Pool::Docker.candidates(0), Vec::new());
    }

    #[test]
    fn host_routes_are_read() {
        // Whatever this machine routes, every entry is a valid network.
        for net in host_routes() {
            assert_eq!(
                net.addr
                    & !Net {
                        addr: 0,
                        prefix: net.prefix
                    }
                    .mask(),
                0
            );
        }
    }
}
