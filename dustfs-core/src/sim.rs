//! A deterministic simulator of the repair loop: many suppliers under churn, blocks placed one
//! shard per supplier, the real supplier and block state machines driven by a virtual clock
//! (no sockets, no threads, a step cap). It answers: with this much churn, grace period and
//! check interval, do blocks survive?
//!
//! Each round: suppliers fail or come back at random (seeded), every supplier gets a liveness
//! check and a tick at the virtual time, suppliers that go offline mark their shards lost in
//! every block they held, and the repair pass rebuilds each degraded block that still has k
//! shards on live suppliers onto other active suppliers (one shard per supplier).

use std::collections::HashSet;

use rand::{Rng, SeedableRng};

use crate::fsm::block::{BlockEvent, BlockState, next};
use crate::fsm::supplier::{Supplier, SupplierConfig, SupplierEvent, SupplierState};

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Suppliers in the network.
    pub suppliers: usize,
    /// Blocks stored.
    pub blocks: usize,
    /// Data shards per block.
    pub k: usize,
    /// Parity shards per block.
    pub m: usize,
    /// Rounds (one liveness check each).
    pub rounds: usize,
    /// Virtual milliseconds between rounds.
    pub round_ms: u64,
    /// Chance per round that a live supplier disappears for good.
    pub fail: f64,
    /// Chance per round that a live supplier misses a check but comes back (flapping).
    pub flap: f64,
    /// Supplier liveness tunables.
    pub supplier: SupplierConfig,
    /// RNG seed.
    pub seed: u64,
}

/// What happened.
#[derive(Debug, Clone, Default)]
pub struct SimReport {
    /// Blocks that fell below k shards.
    pub lost: usize,
    /// Of those, blocks that lost at most m suppliers between two repairs (must be 0).
    pub lost_within_tolerance: usize,
    /// Shards rebuilt onto new suppliers.
    pub repaired_shards: usize,
    /// Suppliers that failed for good.
    pub failed_suppliers: usize,
    /// Suppliers replaced after flapping (should stay low with a sensible grace period).
    pub flapping_replaced: usize,
    /// Blocks healthy at the end.
    pub healthy_at_end: usize,
}

struct Block {
    state: BlockState,
    /// Supplier of each shard; `None` = lost.
    shards: Vec<Option<usize>>,
    /// Distinct suppliers of this block that failed for good since its last full repair.
    failed_since_repair: HashSet<usize>,
}

/// Runs a simulation.
pub fn run(cfg: &SimConfig) -> SimReport {
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let total = cfg.k + cfg.m;
    let mut report = SimReport::default();
    let mut sup: Vec<Supplier> = (0..cfg.suppliers).map(|_| Supplier::default()).collect();
    let mut dead = vec![false; cfg.suppliers];
    let mut flapping = vec![false; cfg.suppliers];
    for s in &mut sup {
        s.handle(0, SupplierEvent::Contracted, &cfg.supplier);
        s.handle(0, SupplierEvent::Stored, &cfg.supplier);
    }
    let mut blocks: Vec<Block> = (0..cfg.blocks)
        .map(|b| {
            let shards = (0..total)
                .map(|i| Some((b * 7 + i) % cfg.suppliers))
                .collect();
            let mut state = next(BlockState::Open, BlockEvent::Seal).unwrap_or(BlockState::Sealed);
            state = next(
                state,
                BlockEvent::Stored {
                    live: total,
                    needed: total,
                    total,
                },
            )
            .unwrap_or(state);
            Block {
                state,
                shards,
                failed_since_repair: HashSet::new(),
            }
        })
        .collect();
    for round in 1..=cfg.rounds.min(1_000_000) {
        let now = round as u64 * cfg.round_ms;
        // Churn.
        for s in 0..cfg.suppliers {
            flapping[s] = false;
            if dead[s] || sup[s].state() == SupplierState::Replaced {
                continue;
            }
            if rng.gen_bool(cfg.fail) {
                dead[s] = true;
                report.failed_suppliers += 1;
                for b in blocks.iter_mut().filter(|b| b.shards.contains(&Some(s))) {
                    b.failed_since_repair.insert(s);
                }
            } else if rng.gen_bool(cfg.flap) {
                flapping[s] = true;
            }
        }
        // Liveness checks and the grace period, on the real supplier machine.
        let mut gone = Vec::new();
        for s in 0..cfg.suppliers {
            let ev = if dead[s] || flapping[s] {
                SupplierEvent::CheckMissed
            } else {
                SupplierEvent::CheckOk
            };
            let a = sup[s].handle(now, ev, &cfg.supplier);
            let b = sup[s].handle(now, SupplierEvent::Tick, &cfg.supplier);
            if a.is_some() || b.is_some() {
                gone.push(s);
                if !dead[s] {
                    report.flapping_replaced += 1;
                }
            }
        }
        // Offline suppliers: their shards are lost in every block they held.
        for &s in &gone {
            for b in blocks.iter_mut() {
                for sh in b.shards.iter_mut().filter(|sh| **sh == Some(s)) {
                    *sh = None;
                }
                if b.shards.iter().any(Option::is_none) {
                    let live = b
                        .shards
                        .iter()
                        .filter(|x| x.is_some_and(|x| !dead[x]))
                        .count();
                    if let Some(t) = next(b.state, BlockEvent::ShardLost { live, k: cfg.k }) {
                        b.state = t;
                    }
                }
            }
            sup[s].handle(now, SupplierEvent::Replaced, &cfg.supplier);
        }
        // Repair: rebuild from any k shards on live suppliers onto active suppliers.
        let active: Vec<usize> = (0..cfg.suppliers)
            .filter(|&s| !dead[s] && sup[s].state() == SupplierState::Active)
            .collect();
        for b in blocks
            .iter_mut()
            .filter(|b| b.state == BlockState::Degraded)
        {
            let live = b
                .shards
                .iter()
                .filter(|x| x.is_some_and(|x| !dead[x]))
                .count();
            if live < cfg.k {
                b.state = BlockState::Lost;
                continue;
            }
            if let Some(t) = next(b.state, BlockEvent::RepairStart) {
                b.state = t;
            }
            let mut used: HashSet<usize> = b.shards.iter().flatten().copied().collect();
            let start = rng.gen_range(0..active.len().max(1));
            for sh in b.shards.iter_mut().filter(|sh| sh.is_none()) {
                let pick = (0..active.len())
                    .map(|j| active[(start + j) % active.len()])
                    .find(|s| !used.contains(s));
                if let Some(s) = pick {
                    used.insert(s);
                    *sh = Some(s);
                    report.repaired_shards += 1;
                }
            }
            let stored = b.shards.iter().filter(|x| x.is_some()).count();
            if let Some(t) = next(
                b.state,
                BlockEvent::Stored {
                    live: stored,
                    needed: total,
                    total,
                },
            ) {
                b.state = t;
            }
            if b.state == BlockState::Healthy {
                // Shards on suppliers that died but are not yet declared offline still count
                // against this block until they are.
                b.failed_since_repair
                    .retain(|s| b.shards.contains(&Some(*s)));
            }
        }
        for b in blocks.iter_mut() {
            let live = b
                .shards
                .iter()
                .filter(|x| x.is_some_and(|x| !dead[x]))
                .count();
            if live < cfg.k && b.state != BlockState::Lost {
                b.state = BlockState::Lost;
            }
        }
    }
    for b in &blocks {
        if b.state == BlockState::Lost {
            report.lost += 1;
            if b.failed_since_repair.len() <= cfg.m {
                report.lost_within_tolerance += 1;
            }
        }
        if b.state == BlockState::Healthy {
            report.healthy_at_end += 1;
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(seed: u64) -> SimConfig {
        SimConfig {
            suppliers: 120,
            blocks: 2000,
            k: 4,
            m: 2,
            rounds: 500,
            round_ms: 60_000,
            fail: 0.0005,
            flap: 0.02,
            supplier: SupplierConfig {
                suspect_after: 2,
                grace_ms: 5 * 60_000,
            },
            seed,
        }
    }

    #[test]
    fn no_block_is_lost_while_at_most_m_of_its_suppliers_fail_between_repairs() {
        for seed in 0..5 {
            let r = run(&base(seed));
            eprintln!("seed {seed}: {r:?}");
            assert!(
                r.failed_suppliers > 10,
                "not enough churn to mean anything: {r:?}"
            );
            assert!(r.repaired_shards > 0, "{r:?}");
            assert_eq!(r.lost_within_tolerance, 0, "seed {seed}: {r:?}");
            assert_eq!(r.lost, 0, "seed {seed}: {r:?}");
        }
    }

    #[test]
    fn a_grace_period_keeps_flapping_suppliers() {
        // 2% of suppliers miss one check each round; with "suspect after 2 misses" and a
        // 5-minute grace period almost none are replaced.
        let r = run(&base(7));
        assert!(
            r.flapping_replaced * 100 <= r.failed_suppliers.max(1) * 10 + 5,
            "{r:?}"
        );
        let hair_trigger = run(&SimConfig {
            supplier: SupplierConfig {
                suspect_after: 1,
                grace_ms: 0,
            },
            ..base(7)
        });
        assert!(
            hair_trigger.flapping_replaced > r.flapping_replaced * 5,
            "{hair_trigger:?} vs {r:?}"
        );
    }

    #[test]
    fn heavy_churn_with_a_long_grace_period_loses_blocks_and_the_simulator_says_so() {
        // The simulator must be able to fail: 3% of suppliers die each minute and the grace
        // period is an hour, so blocks lose more than m suppliers before repair starts.
        let r = run(&SimConfig {
            fail: 0.03,
            rounds: 200,
            supplier: SupplierConfig {
                suspect_after: 2,
                grace_ms: 3_600_000,
            },
            ..base(3)
        });
        assert!(r.lost > 0, "{r:?}");
        assert_eq!(r.lost_within_tolerance, 0, "{r:?}");
    }
}
