//! The rtnetlink requests of a setup: links, addresses and routes. Each
//! function takes the handle of a connection whose socket was opened in the
//! namespace it is meant for (a netlink socket stays bound to the namespace
//! it was created in), and every step may be repeated: existing objects are
//! kept or replaced, missing ones made.

use std::net::IpAddr;
use std::os::fd::RawFd;

use futures_util::stream::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct LinkError {
    what: String,
    source: rtnetlink::Error,
}

fn fail(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> LinkError {
    let what = what.into();
    move |source| LinkError { what, source }
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

/// The index of link `name`, if there is one.
pub async fn index(handle: &Handle, name: &str) -> Result<Option<u32>, LinkError> {
    let mut links = handle.link().get().match_name(name).execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(Some(link.header.index)),
        Ok(None) => Ok(None),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(fail(format!("look up link {name}"))(e)),
    }
}

/// Deletes link `name`; a link that is not there is fine.
pub async fn delete(handle: &Handle, name: &str) -> Result<(), LinkError> {
    let Some(index) = index(handle, name).await? else {
        return Ok(());
    };
    match handle.link().del(index).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
        Err(e) => Err(fail(format!("delete link {name}"))(e)),
    }
}

/// Creates a veth pair whose end `host` stays in the namespace of
/// `handle` and whose end `peer` is created directly inside the namespace
/// open at `peer_netns` (so it never appears on the host under its name).
pub async fn add_veth(
    handle: &Handle,
    host: &str,
    peer: &str,
    peer_netns: RawFd,
) -> Result<(), LinkError> {
    let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
        .name(peer.to_owned())
        .setns_by_fd(peer_netns)
        .build();
    let msg = LinkVeth::new(host, peer)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
        .build();
    handle
        .link()
        .add(msg)
        .execute()
        .await
        .map_err(fail(format!("create veth {host} <-> {peer}")))
}

/// Sets link `name` up.
pub async fn up(handle: &Handle, name: &str) -> Result<(), LinkError> {
    handle
        .link()
        .set(LinkUnspec::new_with_name(name).up().build())
        .execute()
        .await
        .map_err(fail(format!("set {name} up")))
}

/// Puts `addr` on link `index` (replacing it if it is there). IPv6
/// addresses skip duplicate address detection: the pool is ours alone, and
/// a route via the address works at once instead of a second later.
pub async fn address(
    handle: &Handle,
    index: u32,
    name: &str,
    addr: IpNet,
) -> Result<(), LinkError> {
    let mut req = handle
        .address()
        .add(index, addr.addr(), addr.prefix_len())
        .replace();
    if addr.addr().is_ipv6() {
        req.message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    req.execute()
        .await
        .map_err(fail(format!("add address {addr} to {name}")))
}

/// The default route via `gateway` on link `index` (replacing any default
/// route of that family in the main table).
pub async fn default_route(handle: &Handle, index: u32, gateway: IpAddr) -> Result<(), LinkError> {
    let msg = match gateway {
        IpAddr::V4(gw) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .gateway(gw)
            .output_interface(index)
            .build(),
        IpAddr::V6(gw) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
            .gateway(gw)
            .output_interface(index)
            .build(),
    };
    handle
        .route()
        .add(msg)
        .replace()
        .execute()
        .await
        .map_err(fail(format!("add default route via {gateway}")))
}
