//! The network interfaces of hostd's namespace, over rtnetlink: listing them, putting a tap
//! on a bridge and up, deleting one. Netlink answers for the caller's network namespace,
//! whatever `/sys` a process happens to see.

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::{Handle, LinkUnspec};

/// One interface, as much of it as hostd needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `Tun` for a tun or tap device, `Bridge` for a bridge.
    pub kind: Option<InfoKind>,
    /// The bridge (or other controller) the interface is a port of.
    pub controller: Option<u32>,
}

impl Link {
    fn from_message(message: &LinkMessage) -> Self {
        let mut link = Link {
            index: message.header.index,
            name: String::new(),
            kind: None,
            controller: None,
        };
        for attribute in &message.attributes {
            match attribute {
                LinkAttribute::IfName(name) => link.name.clone_from(name),
                LinkAttribute::Controller(index) => link.controller = Some(*index),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(kind) = info {
                            link.kind = Some(kind.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }

    pub fn is_tap(&self) -> bool {
        self.kind == Some(InfoKind::Tun)
    }

    pub fn is_bridge(&self) -> bool {
        self.kind == Some(InfoKind::Bridge)
    }
}

/// A route netlink connection, its I/O driven by a task on the current tokio runtime.
#[derive(Clone)]
pub struct Links {
    handle: Handle,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Links")
    }
}

impl Links {
    /// Opens the connection; must run inside a tokio runtime.
    pub fn connect() -> std::io::Result<Self> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    /// Every interface of the namespace.
    pub async fn all(&self) -> Result<Vec<Link>, rtnetlink::Error> {
        let mut links = Vec::new();
        let mut dump = self.handle.link().get().execute();
        while let Some(message) = dump.try_next().await? {
            links.push(Link::from_message(&message));
        }
        Ok(links)
    }

    /// The interface called `name`, if there is one.
    pub async fn find(&self, name: &str) -> Result<Option<Link>, rtnetlink::Error> {
        Ok(self.all().await?.into_iter().find(|link| link.name == name))
    }

    /// Makes `index` a port of the bridge `bridge` and sets it up (`ip link set master up`).
    pub async fn attach_up(&self, index: u32, bridge: u32) -> Result<(), rtnetlink::Error> {
        let message = LinkUnspec::new_with_index(index)
            .controller(bridge)
            .up()
            .build();
        self.handle.link().change(message).execute().await
    }

    pub async fn delete(&self, index: u32) -> Result<(), rtnetlink::Error> {
        self.handle.link().del(index).execute().await
    }
}
