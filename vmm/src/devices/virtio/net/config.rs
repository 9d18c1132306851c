//! `--net tap=NAME,mac=MAC`: which tap a virtio-net device uses, and the guest's MAC address.
use std::fmt;
use std::str::FromStr;

/// A MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// A random, locally administered, unicast address.
    pub fn random() -> Self {
        let mut b = [0u8; 6];
        // SAFETY: getrandom writes at most `b.len()` bytes into `b`, which we own.
        let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
        if n != b.len() as isize {
            // No entropy source: a fixed address still works for a single VM.
            b = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        }
        b[0] = (b[0] & 0xfe) | 0x02;
        Mac(b)
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for Mac {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut b = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut b {
            let p = parts.next().filter(|p| p.len() == 2);
            *byte = p
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| format!("{s:?} is not a MAC address like 52:54:00:12:34:56"))?;
        }
        if parts.next().is_some() {
            return Err(format!("{s:?} is not a MAC address like 52:54:00:12:34:56"));
        }
        if b[0] & 1 != 0 {
            return Err(format!(
                "{s} is a multicast address; a NIC needs a unicast one"
            ));
        }
        Ok(Mac(b))
    }
}

/// One `--net` option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The host tap interface the device sends to and receives from.
    pub tap: String,
    /// The guest's MAC; random if not given (a restored device keeps its saved one).
    pub mac: Option<Mac>,
}

impl FromStr for NetConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut tap = None;
        let mut mac = None;
        for item in s.split(',') {
            match item.split_once('=') {
                Some(("tap", v)) if !v.is_empty() && v.len() < libc::IFNAMSIZ => {
                    tap = Some(v.to_owned())
                }
                Some(("tap", v)) => return Err(format!("tap name {v:?} must be 1 to 15 bytes")),
                Some(("mac", v)) => mac = Some(v.parse()?),
                _ => {
                    return Err(format!(
                        "unknown --net item {item:?}: expected tap=NAME,mac=MAC"
                    ))
                }
            }
        }
        let tap = tap.ok_or("--net needs tap=NAME")?;
        Ok(NetConfig { tap, mac })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tap_and_mac() {
        let c: NetConfig = "tap=vm0,mac=52:54:00:ab:cd:ef".parse().unwrap();
        assert_eq!(c.tap, "vm0");
        assert_eq!(c.mac, Some(Mac([0x52, 0x54, 0, 0xab, 0xcd, 0xef])));
        assert_eq!(c.mac.unwrap().to_string(), "52:54:00:ab:cd:ef");
        assert_eq!("tap=x".parse::<NetConfig>().unwrap().mac, None);
        for bad in [
            "",
            "mac=52:54:00:ab:cd:ef",
            "tap=vm0,mac=52:54:00:ab:cd",
            "tap=vm0,mac=01:00:5e:00:00:01",
            "tap=vm0,mac=zz:54:00:ab:cd:ef",
            "tap=vm0,speed=10",
            "tap=a-name-far-too-long",
        ] {
            assert!(bad.parse::<NetConfig>().is_err(), "{bad}");
        }
    }

    #[test]
    fn random_macs_are_local_unicast() {
        let m = Mac::random();
        assert_eq!(m.0[0] & 0x03, 0x02);
    }
}
