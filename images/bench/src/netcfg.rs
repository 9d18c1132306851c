//! Network settings on the command line: `ip=10.77.0.10/24`, `gw=10.77.0.1`,
//! `mac=52:54:00:12:34:56`.

/// An IPv4 address with its prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: [u8; 4],
    pub prefix: u8,
}

/// `a.b.c.d`.
pub fn parse_ipv4(s: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = s.split('.');
    for b in &mut out {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        *b = p.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// `a.b.c.d/len`, or `a.b.c.d` meaning /24.
pub fn parse_cidr(s: &str) -> Option<Cidr> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) if !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()) => {
            (a, p.parse().ok().filter(|&p: &u8| (1..=32).contains(&p))?)
        }
        Some(_) => return None,
        None => (s, 24),
    };
    Some(Cidr {
        addr: parse_ipv4(addr)?,
        prefix,
    })
}

/// `xx:xx:xx:xx:xx:xx`, unicast only.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        let p = parts.next().filter(|p| p.len() == 2)?;
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    (parts.next().is_none() && out[0] & 1 == 0).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses_and_refuses_junk() {
        assert_eq!(parse_ipv4("10.77.0.10"), Some([10, 77, 0, 10]));
        assert_eq!(
            parse_cidr("10.77.0.10/16"),
            Some(Cidr {
                addr: [10, 77, 0, 10],
                prefix: 16
            })
        );
        assert_eq!(parse_cidr("10.77.0.10").map(|c| c.prefix), Some(24));
        assert_eq!(
            parse_mac("52:54:00:ab:cd:ef"),
            Some([0x52, 0x54, 0, 0xab, 0xcd, 0xef])
        );
        for bad in [
            "",
            "10.77.0",
            "10.77.0.256",
            "10.77.0.1.2",
            "a.b.c.d",
            "1..2.3",
            "+1.2.3.4",
        ] {
            assert_eq!(parse_ipv4(bad), None, "{bad}");
        }
        for bad in ["10.0.0.1/", "10.0.0.1/0", "10.0.0.1/33", "10.0.0.1/x"] {
            assert_eq!(parse_cidr(bad), None, "{bad}");
        }
        for bad in [
            "52:54:00:ab:cd",
            "01:00:5e:00:00:01",
            "52:54:00:ab:cd:ef:00",
            "52-54-00-ab-cd-ef",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }
}
