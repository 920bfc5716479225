//! Lists of IP networks where a bare address means a single host (`203.0.113.7` = `/32`).

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serializer};

/// Parses `10.0.0.0/8`, `2001:db8::/32`, `203.0.113.7` or `::1`.
pub fn parse(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("`{s}` is not an IP address or CIDR"))
}

/// Serde deserializer.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| parse(s).map_err(serde::de::Error::custom))
        .collect()
}

/// Serde serializer: host networks as bare addresses.
pub fn serialize<S: Serializer>(nets: &[IpNet], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(nets.iter().map(|n| {
        if n.prefix_len() == n.max_prefix_len() {
            n.addr().to_string()
        } else {
            n.to_string()
        }
    }))
}
