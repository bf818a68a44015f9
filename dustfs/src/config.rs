//! The node's configuration: one TOML file in the home directory, with defaults for every key.
//! Unknown keys are an error (a typo must not silently fall back to a default).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors reading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// file
        path: PathBuf,
        /// cause
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys or bad values.
    #[error("{path}: {msg}")]
    Parse {
        /// file
        path: PathBuf,
        /// what is wrong
        msg: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Peers to join the network through: multiaddrs with `/p2p/<id>`, or files listing them.
    pub bootstrap: Vec<String>,
    /// Addresses this node listens on.
    pub listen: Vec<String>,
    /// The customer side: how data is stored.
    pub storage: Storage,
    /// The supplier side: what this node grants others.
    pub supplier: Supplier,
    /// Liveness checks of suppliers and repair.
    pub repair: Repair,
    /// Which snapshots `dustfs prune` keeps.
    pub snapshots: dustfs_core::fs::Retention,
}

/// Liveness checks and repair.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Repair {
    /// Seconds between liveness checks (and repair passes).
    pub check_interval_secs: u64,
    /// Missed checks in a row that make a supplier suspect.
    pub suspect_after: u32,
    /// Seconds a supplier may stay suspect before its shards are rebuilt elsewhere.
    pub grace_secs: u64,
    /// Blocks rebuilt per repair pass (passes follow each other while blocks are degraded).
    pub blocks_per_pass: usize,
    /// MiB per second of block data repair may fetch from suppliers (0: no limit). Repair also
    /// yields to user reads, so it runs at background priority.
    pub bandwidth_mb: u64,
    /// Bytes of audit slices requested per check interval (the audit bandwidth budget).
    pub audit_bytes_per_round: u64,
}

impl Default for Repair {
    fn default() -> Self {
        Self {
            check_interval_secs: 30,
            suspect_after: 2,
            grace_secs: 600,
            blocks_per_pass: 8,
            bandwidth_mb: 32,
            audit_bytes_per_round: 1 << 20,
        }
    }
}

/// How this node stores its own data.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    /// Data shards per block (k).
    pub data_shards: u8,
    /// Parity shards per block (m).
    pub parity_shards: u8,
    /// Shards a supplier must acknowledge before a block counts as durable (k+1..=k+m).
    pub durable_shards: usize,
    /// Local block cache bound, in MiB.
    pub cache_mb: u64,
    /// Seconds an unmount waits for queued uploads before it stops anyway (they resume at the
    /// next mount).
    pub unmount_drain_secs: u64,
}

/// What this node offers as a supplier.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Supplier {
    /// Bytes granted to each customer, in MiB.
    pub quota_mb: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bootstrap: Vec::new(),
            listen: vec![
                "/ip4/0.0.0.0/tcp/0".into(),
                "/ip4/0.0.0.0/udp/0/quic-v1".into(),
            ],
            storage: Storage::default(),
            supplier: Supplier::default(),
            repair: Repair::default(),
            snapshots: dustfs_core::fs::Retention::default(),
        }
    }
}

impl Default for Storage {
    fn default() -> Self {
        Self {
            data_shards: 4,
            parity_shards: 2,
            durable_shards: 6,
            cache_mb: 1024,
            unmount_drain_secs: 30,
        }
    }
}

impl Default for Supplier {
    fn default() -> Self {
        Self {
            quota_mb: 10 * 1024,
        }
    }
}

impl Config {
    /// Reads and validates the file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.into(),
            source,
        })?;
        let c: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            msg: e.to_string(),
        })?;
        c.validate().map_err(|msg| ConfigError::Parse {
            path: path.into(),
            msg,
        })?;
        Ok(c)
    }

    fn validate(&self) -> Result<(), String> {
        let s = &self.storage;
        if s.data_shards == 0 || s.data_shards as usize + s.parity_shards as usize > 255 {
            return Err(format!(
                "storage: invalid redundancy {}+{}",
                s.data_shards, s.parity_shards
            ));
        }
        let total = s.data_shards as usize + s.parity_shards as usize;
        if s.durable_shards > total || s.durable_shards < (s.data_shards as usize + 1).min(total) {
            return Err(format!(
                "storage.durable_shards must be between k+1 and k+m ({total})"
            ));
        }
        Ok(())
    }

    /// Writes the file.
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let text = toml::to_string_pretty(self).map_err(|e| ConfigError::Parse {
            path: path.into(),
            msg: e.to_string(),
        })?;
        let text = format!("# dustfs configuration (see README.md for every key)\n{text}");
        std::fs::write(path, text).map_err(|source| ConfigError::Io {
            path: path.into(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.toml");
        std::fs::write(&p, "listen = []\n[storage]\ndata_shard = 3\n").unwrap();
        let e = Config::load(&p).unwrap_err().to_string();
        assert!(e.contains("data_shard"), "{e}");
    }

    #[test]
    fn defaults_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.toml");
        Config::default().save(&p).unwrap();
        let c = Config::load(&p).unwrap();
        assert_eq!(c.storage.data_shards, 4);
        assert_eq!(c.storage.parity_shards, 2);
    }

    #[test]
    fn bad_redundancy_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.toml");
        std::fs::write(&p, "[storage]\ndata_shards = 0\n").unwrap();
        assert!(Config::load(&p).is_err());
    }
}
