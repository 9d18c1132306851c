//! `--disk path=FILE[,readonly=on|off]`: the raw image a virtio-blk device serves.
use std::path::PathBuf;
use std::str::FromStr;

/// One `--disk` option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// The raw image file; the guest sees its whole 512-byte sectors.
    pub path: PathBuf,
    /// Opened read-only, and offered with `VIRTIO_BLK_F_RO`.
    pub readonly: bool,
}

impl FromStr for DiskConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut path = None;
        let mut readonly = false;
        for item in s.split(',') {
            match item.split_once('=') {
                Some(("path", v)) if !v.is_empty() => path = Some(PathBuf::from(v)),
                Some(("readonly", "on" | "true")) => readonly = true,
                Some(("readonly", "off" | "false")) => readonly = false,
                Some(("readonly", v)) => {
                    return Err(format!("readonly={v:?}: expected on or off"));
                }
                _ => {
                    return Err(format!(
                        "unknown --disk item {item:?}: expected path=FILE[,readonly=on|off]"
                    ))
                }
            }
        }
        let path = path.ok_or("--disk needs path=FILE")?;
        Ok(DiskConfig { path, readonly })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_path_and_readonly() {
        let c: DiskConfig = "path=/var/lib/vm/root.img".parse().unwrap();
        assert_eq!(c.path, PathBuf::from("/var/lib/vm/root.img"));
        assert!(!c.readonly);
        let c: DiskConfig = "path=a.img,readonly=on".parse().unwrap();
        assert!(c.readonly);
        assert!(
            !"path=a.img,readonly=off"
                .parse::<DiskConfig>()
                .unwrap()
                .readonly
        );
        for bad in [
            "",
            "path=",
            "readonly=on",
            "path=a,readonly=maybe",
            "path=a,cache=none",
        ] {
            assert!(bad.parse::<DiskConfig>().is_err(), "{bad}");
        }
    }
}
