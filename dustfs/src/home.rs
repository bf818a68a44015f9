//! The home directory: identity, configuration and local state of one dustfs node.
//!
//! ```text
//! HOME/config.toml     configuration
//! HOME/user.key        the user's master secret (0600; the paper key encodes it)
//! HOME/node.key        this device's libp2p identity (0600)
//! HOME/db/             RocksDB: namespace, extents, upload queue, block cache
//! HOME/shards/         shards this node keeps as a supplier
//! HOME/control.sock    the running mount's control socket
//! HOME/addrs           the running node's listen addresses
//! HOME/mount.log       log of the background mount process
//! ```

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use dustfs_core::keys::MasterSecret;
use dustfs_net::Keypair;

use crate::config::Config;

/// A dustfs home directory.
#[derive(Debug, Clone)]
pub struct Home {
    /// Its path.
    pub dir: PathBuf,
}

impl Home {
    /// `--home`, else `$DUSTFS_HOME`, else the XDG data directory.
    pub fn resolve(flag: Option<PathBuf>) -> Result<Self> {
        let dir = match flag.or_else(|| std::env::var_os("DUSTFS_HOME").map(PathBuf::from)) {
            Some(d) => d,
            None => {
                let base = std::env::var_os("XDG_DATA_HOME")
                    .map(PathBuf::from)
                    .or_else(|| {
                        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share"))
                    })
                    .context(
                        "no --home given and neither DUSTFS_HOME, XDG_DATA_HOME nor HOME is set",
                    )?;
                base.join("dustfs")
            }
        };
        let dir = if dir.is_absolute() {
            dir
        } else {
            std::env::current_dir()?.join(dir)
        };
        Ok(Self { dir })
    }

    /// Path of a file in the home.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Whether an identity exists here.
    pub fn initialized(&self) -> bool {
        self.path("user.key").exists()
    }

    fn write_secret(path: &Path, bytes: &[u8]) -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        Ok(())
    }

    /// Creates the identity and configuration. Refuses to overwrite an existing identity.
    pub fn init(&self, secret: &MasterSecret, config: &Config) -> Result<()> {
        if self.initialized() {
            bail!(
                "{} already holds a dustfs identity; refusing to overwrite it (use another --home, or restore into an empty one)",
                self.dir.display()
            );
        }
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))?;
        let node = Keypair::generate_ed25519();
        let node_bytes = node
            .to_protobuf_encoding()
            .context("encoding the node key")?;
        Self::write_secret(&self.path("node.key"), &node_bytes)?;
        config.save(&self.path("config.toml"))?;
        // The user key last: its presence marks a complete home.
        Self::write_secret(&self.path("user.key"), secret.as_bytes())?;
        Ok(())
    }

    /// Loads the configuration.
    pub fn config(&self) -> Result<Config> {
        self.require()?;
        Ok(Config::load(&self.path("config.toml"))?)
    }

    fn require(&self) -> Result<()> {
        if !self.initialized() {
            bail!(
                "{} holds no dustfs identity: run `dustfs --home {} init` first",
                self.dir.display(),
                self.dir.display()
            );
        }
        Ok(())
    }

    /// Loads the user's master secret.
    pub fn user_secret(&self) -> Result<MasterSecret> {
        self.require()?;
        let b = std::fs::read(self.path("user.key")).context("reading user.key")?;
        Ok(MasterSecret::from_bytes(&b)?)
    }

    /// Loads this device's network identity.
    pub fn node_key(&self) -> Result<Keypair> {
        let b = std::fs::read(self.path("node.key")).context("reading node.key")?;
        Keypair::from_protobuf_encoding(&b).context("node.key is corrupt")
    }

    /// The bootstrap addresses: entries of the config that are multiaddrs, plus the lines of
    /// entries that are files.
    pub fn bootstrap(&self, config: &Config) -> Result<Vec<dustfs_net::Multiaddr>> {
        let mut out = Vec::new();
        for entry in &config.bootstrap {
            if entry.starts_with('/') && !Path::new(entry).exists() {
                out.push(
                    entry
                        .parse()
                        .with_context(|| format!("bootstrap address {entry}"))?,
                );
            } else {
                let text = std::fs::read_to_string(entry)
                    .with_context(|| format!("reading bootstrap file {entry}"))?;
                for line in text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                {
                    out.push(
                        line.parse()
                            .with_context(|| format!("bootstrap address {line} in {entry}"))?,
                    );
                }
            }
        }
        Ok(out)
    }
}
