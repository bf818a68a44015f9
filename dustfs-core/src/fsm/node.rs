//! The node's connectivity: starting → bootstrapping → online (public, private behind a relay,
//! or private with direct connections after hole punching) ↔ offline.
//!
//! Sans-IO: the driver (the libp2p host) feeds what it observes; the machine keeps the last
//! known reachability so a reconnection lands in the right online state.

/// Connectivity states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeState {
    /// Transports are being set up.
    Starting,
    /// Listening; joining the network through bootstrap peers.
    Bootstrapping,
    /// Connected and reachable from outside.
    Public,
    /// Connected, not reachable from outside: reached through a relay.
    Relayed,
    /// Behind NAT, but with direct connections after hole punching.
    Direct,
    /// No peer connected.
    Offline,
}

impl NodeState {
    /// Every state.
    pub const ALL: [NodeState; 6] = [
        Self::Starting,
        Self::Bootstrapping,
        Self::Public,
        Self::Relayed,
        Self::Direct,
        Self::Offline,
    ];

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Bootstrapping => "bootstrapping",
            Self::Public => "public",
            Self::Relayed => "relayed",
            Self::Direct => "direct",
            Self::Offline => "offline",
        }
    }

    /// Whether the node can talk to the network.
    pub fn is_online(self) -> bool {
        matches!(self, Self::Public | Self::Relayed | Self::Direct)
    }
}

/// Observations of the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeEvent {
    /// A listen address is up.
    Listening,
    /// A peer connected.
    PeerConnected,
    /// The last peer disconnected.
    AllPeersLost,
    /// Reachability probes (autonat) say the node is reachable from outside.
    ReachablePublic,
    /// Reachability probes say it is not.
    ReachablePrivate,
    /// A hole punch succeeded: a direct connection exists.
    HolePunched,
    /// The last direct connection closed; only relayed ones remain.
    DirectLost,
}

/// The connectivity machine.
#[derive(Debug, Clone)]
pub struct Node {
    state: NodeState,
    /// Last known reachability (`None` = not probed yet, assumed public).
    private: Option<bool>,
}

impl Default for Node {
    fn default() -> Self {
        Self {
            state: NodeState::Starting,
            private: None,
        }
    }
}

impl Node {
    /// The current state.
    pub fn state(&self) -> NodeState {
        self.state
    }

    fn online(&self) -> NodeState {
        if self.private == Some(true) {
            NodeState::Relayed
        } else {
            NodeState::Public
        }
    }

    /// Feeds an observation; returns the new state.
    pub fn handle(&mut self, ev: NodeEvent) -> NodeState {
        use NodeEvent as E;
        use NodeState as S;
        match ev {
            E::ReachablePublic => self.private = Some(false),
            E::ReachablePrivate => self.private = Some(true),
            _ => {}
        }
        self.state = match (self.state, ev) {
            (S::Starting, E::Listening) => S::Bootstrapping,
            (S::Bootstrapping | S::Offline, E::PeerConnected) => self.online(),
            (S::Public | S::Relayed | S::Direct, E::AllPeersLost) => S::Offline,
            (S::Public | S::Direct, E::ReachablePrivate) => {
                if self.state == S::Direct {
                    S::Direct
                } else {
                    S::Relayed
                }
            }
            (S::Relayed | S::Direct, E::ReachablePublic) => S::Public,
            (S::Relayed, E::HolePunched) => S::Direct,
            (S::Direct, E::DirectLost) => S::Relayed,
            (s, _) => s,
        };
        self.state
    }
}

/// The printable machine.
pub struct NodeMachine;

impl super::Machine for NodeMachine {
    const NAME: &'static str = "node";
    fn edges() -> Vec<(&'static str, &'static str, &'static str)> {
        // Derived by driving the real machine from each state (reached with both known
        // reachabilities) with each event.
        let paths: [&[NodeEvent]; 10] = [
            &[],
            &[NodeEvent::Listening],
            &[NodeEvent::Listening, NodeEvent::PeerConnected],
            &[
                NodeEvent::ReachablePrivate,
                NodeEvent::Listening,
                NodeEvent::PeerConnected,
            ],
            &[
                NodeEvent::ReachablePrivate,
                NodeEvent::Listening,
                NodeEvent::PeerConnected,
                NodeEvent::HolePunched,
            ],
            &[
                NodeEvent::Listening,
                NodeEvent::PeerConnected,
                NodeEvent::AllPeersLost,
            ],
            &[
                NodeEvent::ReachablePrivate,
                NodeEvent::Listening,
                NodeEvent::PeerConnected,
                NodeEvent::AllPeersLost,
            ],
            &[NodeEvent::ReachablePublic, NodeEvent::Listening],
            &[NodeEvent::ReachablePrivate, NodeEvent::Listening],
            &[
                NodeEvent::ReachablePublic,
                NodeEvent::Listening,
                NodeEvent::PeerConnected,
            ],
        ];
        let events = [
            ("listening", NodeEvent::Listening),
            ("peer_connected", NodeEvent::PeerConnected),
            ("all_peers_lost", NodeEvent::AllPeersLost),
            ("reachable_public", NodeEvent::ReachablePublic),
            ("reachable_private", NodeEvent::ReachablePrivate),
            ("hole_punched", NodeEvent::HolePunched),
            ("direct_lost", NodeEvent::DirectLost),
        ];
        let mut edges = Vec::new();
        for path in paths {
            for (name, ev) in events {
                let mut m = Node::default();
                for e in path {
                    m.handle(*e);
                }
                let from = m.state();
                let to = m.handle(ev);
                let edge = (from.name(), name, to.name());
                if from != to && !edges.contains(&edge) {
                    edges.push(edge);
                }
            }
        }
        edges
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn event() -> impl Strategy<Value = NodeEvent> {
        prop_oneof![
            Just(NodeEvent::Listening),
            Just(NodeEvent::PeerConnected),
            Just(NodeEvent::AllPeersLost),
            Just(NodeEvent::ReachablePublic),
            Just(NodeEvent::ReachablePrivate),
            Just(NodeEvent::HolePunched),
            Just(NodeEvent::DirectLost),
        ]
    }

    proptest! {
        #[test]
        fn invariants_hold(events in proptest::collection::vec(event(), 0..100)) {
            let mut m = Node::default();
            let mut listened = false;
            for e in events {
                let before = m.state();
                listened |= e == NodeEvent::Listening;
                let s = m.handle(e);
                // Never online without having listened; never back to starting.
                if s.is_online() { prop_assert!(listened); }
                if before != NodeState::Starting { prop_assert_ne!(s, NodeState::Starting); }
                // Direct only from relayed, by a hole punch.
                if s == NodeState::Direct && before != NodeState::Direct {
                    prop_assert_eq!((before, e), (NodeState::Relayed, NodeEvent::HolePunched));
                }
                // Losing all peers always means offline.
                if e == NodeEvent::AllPeersLost && before.is_online() { prop_assert_eq!(s, NodeState::Offline); }
            }
        }
    }

    #[test]
    fn a_private_node_starts_relayed_and_becomes_direct() {
        let mut m = Node::default();
        m.handle(NodeEvent::Listening);
        m.handle(NodeEvent::ReachablePrivate);
        assert_eq!(m.handle(NodeEvent::PeerConnected), NodeState::Relayed);
        assert_eq!(m.handle(NodeEvent::HolePunched), NodeState::Direct);
        assert_eq!(m.handle(NodeEvent::AllPeersLost), NodeState::Offline);
        assert_eq!(m.handle(NodeEvent::PeerConnected), NodeState::Relayed);
    }
}
