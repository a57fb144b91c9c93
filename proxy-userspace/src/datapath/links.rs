//! What kind of link an interface is, asked of the kernel over rtnetlink.
//! sysfs would answer too, but only for the network namespace it was mounted
//! in, which need not be the agent's.
use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use super::DatapathError;

/// Room for one RTM_NEWLINK answer; links with many attributes (VFs) fit.
const ANSWER_BUFFER: usize = 64 * 1024;

/// The device a NIC's driver is bound to (`0000:00:03.0`, `virtio0`), or
/// `None` for virtual interfaces: veth, bridges, bonds, tunnels.
pub fn parent_device(interface: &str) -> Result<Option<String>, DatapathError> {
    let fail = |message: String| DatapathError::Interface {
        interface: interface.to_string(),
        message,
    };
    let mut request_link = LinkMessage::default();
    request_link
        .attributes
        .push(LinkAttribute::IfName(interface.to_string()));
    let mut request = NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::from(RouteNetlinkMessage::GetLink(request_link)),
    );
    request.header.flags = NLM_F_REQUEST;
    request.header.sequence_number = 1;
    request.finalize();
    let mut bytes = vec![0; request.buffer_len()];
    request.serialize(&mut bytes);

    let socket = Socket::new(NETLINK_ROUTE).map_err(|e| fail(format!("netlink socket: {e}")))?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(|e| fail(format!("netlink connect: {e}")))?;
    socket
        .send(&bytes, 0)
        .map_err(|e| fail(format!("netlink send: {e}")))?;
    let mut answer = Vec::with_capacity(ANSWER_BUFFER);
    socket
        .recv(&mut answer, 0)
        .map_err(|e| fail(format!("netlink receive: {e}")))?;
    let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&answer)
        .map_err(|e| fail(format!("netlink answer: {e}")))?;
    match message.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
            Ok(link.attributes.into_iter().find_map(|a| match a {
                LinkAttribute::ParentDevName(name) => Some(name),
                _ => None,
            }))
        }
        NetlinkPayload::Error(e) => Err(fail(format!("no such link: {}", e.to_io()))),
        other => Err(fail(format!(
            "unexpected netlink answer of type {}",
            other.message_type()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_virtual_and_unknown_names_are_errors() {
        assert_eq!(parent_device("lo").unwrap(), None);
        let error = parent_device("vipr-no-such0").unwrap_err().to_string();
        assert!(error.contains("vipr-no-such0"), "{error}");
    }
}
