//! VM networking with `hostd --bridge NAME`: each VM gets a tap of its own on the operator's
//! bridge, and a MAC address fixed by its VM id.
//!
//! - The tap is `lm` + the first 13 hex digits of the VM id (15 bytes, the kernel's limit).
//!   hostd makes it persistent, puts it on the bridge and up, and gives it to `vmm` as
//!   `--net tap=NAME,mac=MAC`. The guest reads its MAC from the virtio-net config space.
//! - The MAC is locally administered unicast, `02:` + the first five bytes of the VM id. The VM
//!   id travels with a migration, and so does the MAC (in the prepare request): the VM keeps
//!   its MAC, and so its IP, on the destination.
//! - The tap and MAC are in the VM's durable record before the tap exists, so a hostd that
//!   crashes at any point finds them on restart. The tap is deleted whenever the VM ends here
//!   (stopped, reclaimed, exited or killed, migrated away, failed to start); on start, taps of
//!   hostd's naming that belong to no VM are deleted (orphans).
//! - Two hostds in one network namespace would give a migrating VM's two copies the same tap
//!   name; the second is refused (`IFF_TUN_EXCL`), never shared. Hosts are separate namespaces.

mod links;
mod tap;

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use vmm::devices::virtio::net::Mac;

use crate::host::Host;
use crate::http::error::chain;

pub use links::{Link, Links};

/// What every tap of hostd's starts with.
pub const TAP_PREFIX: &str = "lm";
/// Hex digits of the VM id in a tap name: `lm` + 13 = 15 bytes, IFNAMSIZ less the NUL.
const TAP_ID_DIGITS: usize = 13;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot open a netlink connection")]
    Netlink(#[source] std::io::Error),
    #[error("cannot list the network interfaces")]
    List(#[source] rtnetlink::Error),
    #[error("there is no interface {0:?} for VM taps; the bridge must exist before hostd starts (e.g. `ip link add {0} type bridge`)")]
    NoBridge(String),
    #[error("interface {0:?} is not a bridge")]
    NotABridge(String),
    #[error("cannot create tap {name}")]
    Create {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("tap {name} vanished right after it was created")]
    Vanished { name: String },
    #[error("cannot put tap {name} on bridge {bridge} and up")]
    Attach {
        name: String,
        bridge: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("interface {0:?} has a VM tap's name but is not a tap; left alone")]
    NotATap(String),
    #[error("cannot delete tap {name}")]
    Delete {
        name: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("this host gives VMs no network (hostd runs without --bridge)")]
    NoNetwork,
    #[error("{0:?} is not a VM id (32 hex digits)")]
    BadVmId(String),
}

/// A VM's network identity on this host: its tap and its MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmNet {
    pub tap: String,
    #[serde(with = "mac_text")]
    pub mac: Mac,
}

impl VmNet {
    /// The tap and MAC of VM `vm_id` (32 hex digits).
    pub fn for_vm(vm_id: &str) -> Result<Self, NetError> {
        let bytes: [u8; 16] =
            token::hex::decode_array(vm_id).map_err(|_| NetError::BadVmId(vm_id.into()))?;
        Ok(Self {
            tap: tap_name(vm_id),
            mac: Mac([0x02, bytes[0], bytes[1], bytes[2], bytes[3], bytes[4]]),
        })
    }

    /// The same MAC on this host's tap, for a VM arriving by migration.
    pub fn arriving(vm_id: &str, mac: Mac) -> Result<Self, NetError> {
        Ok(Self {
            mac,
            ..Self::for_vm(vm_id)?
        })
    }

    /// `vmm run`'s `--net` value.
    pub fn vmm_arg(&self) -> String {
        format!("tap={},mac={}", self.tap, self.mac)
    }
}

fn tap_name(vm_id: &str) -> String {
    let digits: String = vm_id.chars().take(TAP_ID_DIGITS).collect();
    format!("{TAP_PREFIX}{digits}")
}

/// Whether `name` is of hostd's tap naming.
fn is_vm_tap_name(name: &str) -> bool {
    name.strip_prefix(TAP_PREFIX).is_some_and(|digits| {
        digits.len() == TAP_ID_DIGITS && digits.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

/// The MAC as text (`02:11:22:33:44:55`) in records and messages.
mod mac_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use vmm::devices::virtio::net::Mac;

    pub fn serialize<S: Serializer>(mac: &Mac, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(mac)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Mac, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The bridge VM taps go on, and the connection that manages them.
#[derive(Debug)]
pub struct Network {
    bridge: String,
    links: Links,
}

impl Network {
    /// Checks that `bridge` exists and is a bridge. Must run inside a tokio runtime.
    pub async fn open(bridge: &str) -> Result<Self, NetError> {
        let network = Self {
            bridge: bridge.into(),
            links: Links::connect().map_err(NetError::Netlink)?,
        };
        network.bridge_index().await?;
        Ok(network)
    }

    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The bridge's index, looked up each time: the operator may have remade it.
    async fn bridge_index(&self) -> Result<u32, NetError> {
        match self
            .links
            .find(&self.bridge)
            .await
            .map_err(NetError::List)?
        {
            None => Err(NetError::NoBridge(self.bridge.clone())),
            Some(link) if !link.is_bridge() => Err(NetError::NotABridge(self.bridge.clone())),
            Some(link) => Ok(link.index),
        }
    }

    /// Creates `name`, puts it on the bridge and sets it up. On failure nothing is left.
    pub async fn create_tap(&self, name: &str) -> Result<(), NetError> {
        let bridge = self.bridge_index().await?;
        tap::create_persistent(name).map_err(|source| NetError::Create {
            name: name.into(),
            source,
        })?;
        let attached = async {
            let link = self
                .links
                .find(name)
                .await
                .map_err(NetError::List)?
                .ok_or_else(|| NetError::Vanished { name: name.into() })?;
            self.links
                .attach_up(link.index, bridge)
                .await
                .map_err(|source| NetError::Attach {
                    name: name.into(),
                    bridge: self.bridge.clone(),
                    source,
                })
        }
        .await;
        if let Err(error) = attached {
            if let Err(e) = self.remove_tap(name).await {
                tracing::warn!(tap = name, "cannot delete a tap that failed to attach: {e}");
            }
            return Err(error);
        }
        Ok(())
    }

    /// Deletes the tap `name`; `Ok(false)` if there was none.
    pub async fn remove_tap(&self, name: &str) -> Result<bool, NetError> {
        let Some(link) = self.links.find(name).await.map_err(NetError::List)? else {
            return Ok(false);
        };
        if !link.is_tap() {
            return Err(NetError::NotATap(name.into()));
        }
        self.links
            .delete(link.index)
            .await
            .map_err(|source| NetError::Delete {
                name: name.into(),
                source,
            })?;
        Ok(true)
    }

    /// Deletes the taps of hostd's naming that are on this host's bridge (or on none, as a
    /// crash between creating and attaching leaves them) and are not in `keep`; returns their
    /// names. Taps on another bridge belong to someone else and stay.
    pub async fn remove_orphans(&self, keep: &BTreeSet<String>) -> Result<Vec<String>, NetError> {
        let bridge = self.bridge_index().await?;
        let links = self.links.all().await.map_err(NetError::List)?;
        let mut removed = Vec::new();
        for link in links {
            let ours = link.controller.is_none_or(|c| c == bridge);
            if link.is_tap() && ours && is_vm_tap_name(&link.name) && !keep.contains(&link.name) {
                self.links
                    .delete(link.index)
                    .await
                    .map_err(|source| NetError::Delete {
                        name: link.name.clone(),
                        source,
                    })?;
                removed.push(link.name);
            }
        }
        Ok(removed)
    }
}

/// Makes the tap of VM `vm_id`, about to start here.
pub async fn create_vm_tap(host: &Host, vm_id: &str, net: &VmNet) -> Result<(), NetError> {
    let Some(network) = &host.network else {
        return Err(NetError::NoNetwork);
    };
    match network.create_tap(&net.tap).await {
        Ok(()) => {
            host.metrics.inc("hostd_taps_total", "created");
            tracing::info!(event = "tap_created", vm = vm_id, tap = %net.tap, mac = %net.mac, bridge = network.bridge(), "VM tap on the bridge");
            Ok(())
        }
        Err(error) => {
            host.metrics.inc("hostd_taps_total", "create_failed");
            Err(error)
        }
    }
}

/// Deletes the tap of a VM that ended here (or never started). A failure is logged and
/// counted: the orphan sweep of the next start removes the tap.
pub async fn remove_vm_tap(host: &Host, vm_id: &str, net: Option<&VmNet>) {
    let (Some(network), Some(net)) = (&host.network, net) else {
        return;
    };
    match network.remove_tap(&net.tap).await {
        Ok(true) => {
            host.metrics.inc("hostd_taps_total", "removed");
            tracing::info!(event = "tap_removed", vm = vm_id, tap = %net.tap, "VM tap deleted");
        }
        Ok(false) => {}
        Err(e) => {
            host.metrics.inc("hostd_taps_total", "remove_failed");
            tracing::error!(vm = vm_id, tap = %net.tap, "cannot delete the VM's tap: {}", chain(&e));
        }
    }
}

/// At start, after recovery: deletes the taps that belong to no VM of this host.
pub async fn remove_orphan_taps(host: &Host) {
    let Some(network) = &host.network else {
        return;
    };
    let keep: BTreeSet<String> = host
        .vms()
        .values()
        .filter_map(|vm| vm.net.as_ref().map(|net| net.tap.clone()))
        .collect();
    match network.remove_orphans(&keep).await {
        Ok(removed) => {
            for tap in removed {
                host.metrics.inc("hostd_taps_total", "orphan_removed");
                tracing::info!(event = "tap_removed", tap, "deleted an orphaned VM tap");
            }
        }
        Err(e) => tracing::error!("cannot sweep orphaned VM taps: {}", chain(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_macs_follow_the_vm_id() {
        let id = "0123456789abcdef0123456789abcdef";
        let net = VmNet::for_vm(id).unwrap();
        assert_eq!(net.tap, "lm0123456789abc");
        assert_eq!(net.tap.len(), 15);
        assert!(is_vm_tap_name(&net.tap));
        assert_eq!(net.mac.to_string(), "02:01:23:45:67:89");
        assert_eq!(net.vmm_arg(), "tap=lm0123456789abc,mac=02:01:23:45:67:89");
        // Locally administered, unicast.
        assert_eq!(net.mac.0[0] & 0x03, 0x02);
        for bad in ["", "0123", "zz23456789abcdef0123456789abcdef"] {
            assert!(VmNet::for_vm(bad).is_err(), "{bad}");
        }
        for other in ["lm", "lm0123", "eth0", "lm0123456789abz", "xm0123456789abc"] {
            assert!(!is_vm_tap_name(other), "{other}");
        }
    }

    #[test]
    fn records_keep_the_mac_as_text() {
        let net = VmNet::for_vm("fedcba9876543210fedcba9876543210").unwrap();
        let json = serde_json::to_string(&net).unwrap();
        assert_eq!(
            json,
            r#"{"tap":"lmfedcba9876543","mac":"02:fe:dc:ba:98:76"}"#
        );
        assert_eq!(serde_json::from_str::<VmNet>(&json).unwrap(), net);
        let multicast = r#"{"tap":"lmfedcba9876543","mac":"03:fe:dc:ba:98:76"}"#;
        assert!(serde_json::from_str::<VmNet>(multicast).is_err());
    }
}
