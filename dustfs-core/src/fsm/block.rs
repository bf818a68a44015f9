//! The life of a block: open → sealed → uploading → durable → healthy, and on the repair side
//! healthy → degraded → repairing → healthy, lost when fewer than k shards remain.
//!
//! Shard acknowledgements are counted by the machine itself so that "durable" means what the
//! configuration says (all k+m acknowledged by default, never fewer than k+1).

use serde::{Deserialize, Serialize};

/// Health states of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BlockState {
    /// Still being filled with sealed chunks; only on local disk.
    Open,
    /// Erasure-coded; shards wait in the upload queue.
    Sealed,
    /// Some shards are acknowledged by suppliers, not enough yet.
    Uploading,
    /// Enough shards acknowledged to meet the durability threshold.
    Durable,
    /// All k+m shards are on live suppliers.
    Healthy,
    /// Fewer than k+m shards, at least k.
    Degraded,
    /// Missing shards are being rebuilt.
    Repairing,
    /// Fewer than k shards remain: the block cannot be rebuilt.
    Lost,
}

impl BlockState {
    /// Every state, in life order.
    pub const ALL: [BlockState; 8] = [
        Self::Open,
        Self::Sealed,
        Self::Uploading,
        Self::Durable,
        Self::Healthy,
        Self::Degraded,
        Self::Repairing,
        Self::Lost,
    ];

    /// Lower-case name, used in status output and diagrams.
    pub fn name(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Sealed => "sealed",
            Self::Uploading => "uploading",
            Self::Durable => "durable",
            Self::Healthy => "healthy",
            Self::Degraded => "degraded",
            Self::Repairing => "repairing",
            Self::Lost => "lost",
        }
    }

    /// Whether the block's data is safe on suppliers (the local copy may be dropped).
    pub fn is_stored(self) -> bool {
        matches!(
            self,
            Self::Durable | Self::Healthy | Self::Degraded | Self::Repairing
        )
    }
}

/// Events that move a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockEvent {
    /// The open block was closed and erasure-coded.
    Seal,
    /// A supplier acknowledged a shard; `live` shards are now stored, `needed` make it durable,
    /// `total` is k+m.
    Stored {
        /// shards stored on live suppliers
        live: usize,
        /// durability threshold
        needed: usize,
        /// k+m
        total: usize,
    },
    /// A shard was found missing or corrupt, or its supplier left, or (for a block not yet
    /// durable) the local copy its queued shards come from; `live` remain, `k` needed.
    ShardLost {
        /// shards still good
        live: usize,
        /// data shards needed to rebuild
        k: usize,
    },
    /// Repair started.
    RepairStart,
}

/// The pure transition function. `None` means the event does not apply in that state (the
/// driver logs it and keeps the state).
pub fn next(state: BlockState, event: BlockEvent) -> Option<BlockState> {
    use BlockEvent as E;
    use BlockState as S;
    Some(match (state, event) {
        (S::Open, E::Seal) => S::Sealed,
        (
            S::Sealed | S::Uploading,
            E::Stored {
                live,
                needed,
                total,
            },
        ) => {
            if live >= total {
                S::Healthy
            } else if live >= needed {
                S::Durable
            } else {
                S::Uploading
            }
        }
        (S::Durable | S::Degraded | S::Repairing, E::Stored { live, total, .. }) => {
            if live >= total { S::Healthy } else { state }
        }
        (S::Healthy | S::Durable | S::Degraded | S::Repairing, E::ShardLost { live, k }) => {
            if live < k { S::Lost } else { S::Degraded }
        }
        // A block still on its way whose local copy was found damaged: with fewer than k
        // shards out, nothing can rebuild what is still to upload.
        (S::Sealed | S::Uploading, E::ShardLost { live, k }) if live < k => S::Lost,
        (S::Degraded, E::RepairStart) => S::Repairing,
        _ => return None,
    })
}

/// The printable machine.
pub struct BlockMachine;

impl super::Machine for BlockMachine {
    const NAME: &'static str = "block";
    fn edges() -> Vec<(&'static str, &'static str, &'static str)> {
        // Derived by running the transition function over representative events, so the
        // table cannot drift from the code.
        let events: [(&'static str, BlockEvent); 7] = [
            ("seal", BlockEvent::Seal),
            (
                "stored(<need)",
                BlockEvent::Stored {
                    live: 1,
                    needed: 5,
                    total: 6,
                },
            ),
            (
                "stored(>=need)",
                BlockEvent::Stored {
                    live: 5,
                    needed: 5,
                    total: 6,
                },
            ),
            (
                "stored(all)",
                BlockEvent::Stored {
                    live: 6,
                    needed: 5,
                    total: 6,
                },
            ),
            ("shard_lost(>=k)", BlockEvent::ShardLost { live: 5, k: 4 }),
            ("shard_lost(<k)", BlockEvent::ShardLost { live: 3, k: 4 }),
            ("repair_start", BlockEvent::RepairStart),
        ];
        let mut edges = Vec::new();
        for s in BlockState::ALL {
            for (name, e) in events {
                if let Some(t) = next(s, e)
                    && t != s
                {
                    edges.push((s.name(), name, t.name()));
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

    fn event() -> impl Strategy<Value = BlockEvent> {
        prop_oneof![
            Just(BlockEvent::Seal),
            (0usize..8).prop_map(|live| BlockEvent::Stored {
                live,
                needed: 6,
                total: 6
            }),
            (0usize..8).prop_map(|live| BlockEvent::ShardLost { live, k: 4 }),
            Just(BlockEvent::RepairStart),
        ]
    }

    proptest! {
        #[test]
        fn lost_is_final_and_open_only_leaves_by_seal(events in proptest::collection::vec(event(), 0..64)) {
            let mut s = BlockState::Open;
            for e in events {
                let before = s;
                if let Some(t) = next(s, e) { s = t; }
                if before == BlockState::Lost { prop_assert_eq!(s, BlockState::Lost); }
                if before == BlockState::Open && s != BlockState::Open { prop_assert_eq!(e, BlockEvent::Seal); }
                if s == BlockState::Healthy && before != BlockState::Healthy {
                    let all_stored = matches!(e, BlockEvent::Stored { live, total, .. } if live >= total);
                    prop_assert!(all_stored);
                }
            }
        }
    }

    #[test]
    fn a_block_becomes_healthy_only_when_all_shards_are_stored() {
        let mut s = next(BlockState::Open, BlockEvent::Seal).unwrap();
        for live in 1..=5 {
            s = next(
                s,
                BlockEvent::Stored {
                    live,
                    needed: 6,
                    total: 6,
                },
            )
            .unwrap();
            assert_eq!(s, BlockState::Uploading);
        }
        s = next(
            s,
            BlockEvent::Stored {
                live: 6,
                needed: 6,
                total: 6,
            },
        )
        .unwrap();
        assert_eq!(s, BlockState::Healthy);
        assert_eq!(
            next(s, BlockEvent::ShardLost { live: 3, k: 4 }),
            Some(BlockState::Lost)
        );
    }

    #[test]
    fn the_table_lists_the_main_path() {
        let t = super::super::table::<BlockMachine>();
        assert!(t.contains("open           seal               sealed"));
        assert!(super::super::dot::<BlockMachine>().contains("uploading -> healthy"));
    }
}
