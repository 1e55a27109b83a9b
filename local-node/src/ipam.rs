//! Pod IPs: `<prefix>.2` .. `<prefix>.254` (`.1` is the host side of the veth, see netns.rs).
//!
//! The apiserver refuses loopback addresses (127.0.0.0/8) in EndpointSlices and Endpoints, and
//! they could not be routed into the pod network namespace anyway, so they are refused here. The
//! default is a /24 of 198.18.0.0/15 (RFC 2544, reserved for benchmarks: never a real network),
//! which only exists inside local-node's own network namespace and on its veth.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Mutex;

pub struct IpPool {
    prefix: [u8; 3],
    inner: Mutex<Inner>,
}

struct Inner {
    used: HashSet<u8>,
    /// Round robin, so that a freed IP is not handed out again at once (EndpointSlices and
    /// clients may still point at it for a moment).
    next: u8,
}

impl IpPool {
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        let parts: Vec<u8> = prefix
            .split('.')
            .map(|p| p.parse::<u8>())
            .collect::<Result<_, _>>()
            .map_err(|_| {
                anyhow::anyhow!("--ip-prefix `{prefix}`: expected three octets like 198.18.100")
            })?;
        anyhow::ensure!(
            parts.len() == 3,
            "--ip-prefix `{prefix}`: expected three octets like 198.18.100"
        );
        anyhow::ensure!(
            parts[0] != 127,
            "--ip-prefix `{prefix}`: loopback addresses cannot be pod IPs (the apiserver refuses \
             them in EndpointSlices, and they cannot be routed to the pod network namespace); \
             use a /24 of 198.18.0.0/15"
        );
        anyhow::ensure!(
            !(matches!(parts[0], 0 | 224..=255) || (parts[0] == 169 && parts[1] == 254)),
            "--ip-prefix `{prefix}`: not a usable unicast range"
        );
        Ok(Self {
            prefix: [parts[0], parts[1], parts[2]],
            inner: Mutex::new(Inner {
                used: HashSet::new(),
                next: 2,
            }),
        })
    }

    fn ip(&self, last: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.prefix[0], self.prefix[1], self.prefix[2], last)
    }

    fn last_octet(&self, ip: Ipv4Addr) -> Option<u8> {
        let o = ip.octets();
        (o[..3] == self.prefix && (2..=254).contains(&o[3])).then_some(o[3])
    }

    /// A free IP (nothing else runs in local-node's network namespace, so an IP no pod holds
    /// has all its ports free). `preferred` (the pod's earlier IP, after a local-node restart)
    /// is taken if possible.
    pub fn allocate(&self, preferred: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        let mut inner = self.inner.lock().unwrap();
        if let Some(last) = preferred.and_then(|ip| self.last_octet(ip))
            && !inner.used.contains(&last)
        {
            inner.used.insert(last);
            return Some(self.ip(last));
        }
        for i in 0..253u16 {
            let last = (((inner.next as u16 - 2 + i) % 253) + 2) as u8;
            if inner.used.contains(&last) {
                continue;
            }
            inner.used.insert(last);
            inner.next = if last == 254 { 2 } else { last + 1 };
            return Some(self.ip(last));
        }
        None
    }

    pub fn prefix(&self) -> String {
        format!("{}.{}.{}", self.prefix[0], self.prefix[1], self.prefix[2])
    }

    pub fn octets(&self) -> [u8; 3] {
        self.prefix
    }

    pub fn release(&self, ip: Ipv4Addr) {
        if let Some(last) = self.last_octet(ip) {
            self.inner.lock().unwrap().used.remove(&last);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_round_robin_and_prefers_the_old_ip() {
        let pool = IpPool::new("198.19.213").unwrap();
        let ip = |l| Ipv4Addr::new(198, 19, 213, l);
        let a = pool.allocate(None).unwrap();
        assert_eq!(a, ip(2));
        assert_eq!(pool.allocate(None).unwrap(), ip(3));
        pool.release(a);
        // round robin: .2 is free again but not reused at once
        assert_eq!(pool.allocate(None).unwrap(), ip(4));
        assert_eq!(pool.allocate(Some(a)).unwrap(), a);
        assert!(pool.allocate(Some(a)).is_some_and(|x| x != a));
        // outside the range: ignored
        assert_eq!(
            pool.allocate(Some(Ipv4Addr::new(10, 0, 0, 7))).unwrap(),
            ip(6)
        );
        // exhaustion
        let pool = IpPool::new("198.19.214").unwrap();
        assert_eq!((0..253).filter_map(|_| pool.allocate(None)).count(), 253);
        assert!(pool.allocate(None).is_none());
    }

    #[test]
    fn rejects_bad_prefixes() {
        assert!(IpPool::new("169.254.0").is_err());
        assert!(IpPool::new("0.1.2").is_err());
        assert!(IpPool::new("127.0.100").is_err());
        assert!(IpPool::new("198.18").is_err());
        assert!(IpPool::new("198.18.300").is_err());
        assert!(IpPool::new("198.18.100").is_ok());
    }
}
