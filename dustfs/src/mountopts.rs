//! Mount options: what `dustfs mount -o` and the mount(8) helper `mount.dustfs` accept.
//!
//! mount(8) runs `mount.dustfs SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS]` (SOURCE is the dustfs
//! home). Options that only mean something to mount(8), fstab or systemd are accepted and
//! ignored; any other unknown option is an error (unless `-s`, sloppy, is given).

use std::path::PathBuf;

use anyhow::{Result, bail};

/// Options of one mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOpts {
    /// Let users other than the mounting one see the filesystem (default on: a backup
    /// filesystem is usually mounted by root for everyone, with the kernel checking modes).
    pub allow_other: bool,
    /// Let the kernel check permissions against the file modes (default on).
    pub default_permissions: bool,
    /// Mount read-only.
    pub ro: bool,
    /// Show every file as owned by this user.
    pub uid: Option<u32>,
    /// Show every file as owned by this group.
    pub gid: Option<u32>,
    /// Local cache bound, in MiB (overrides the configuration).
    pub cache_mb: Option<u64>,
    /// Mount this snapshot (a root record's sequence number) read-only.
    pub snapshot: Option<u64>,
}

impl Default for MountOpts {
    fn default() -> Self {
        Self {
            allow_other: true,
            default_permissions: true,
            ro: false,
            uid: None,
            gid: None,
            cache_mb: None,
            snapshot: None,
        }
    }
}

/// Options that belong to mount(8), fstab or systemd and mean nothing to dustfs itself.
const PASSED_OVER: &[&str] = &[
    "defaults",
    "rw",
    "auto",
    "noauto",
    "_netdev",
    "nofail",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "exec",
    "noexec",
    "suid",
    "nosuid",
    "dev",
    "nodev",
    "atime",
    "noatime",
    "relatime",
    "strictatime",
    "nodiratime",
    "diratime",
    "sync",
    "async",
    "loud",
    "silent",
];

impl MountOpts {
    /// Parses a comma-separated option string onto these options.
    pub fn apply(&mut self, list: &str, sloppy: bool) -> Result<()> {
        for opt in list.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let (key, value) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (opt, None),
            };
            let num = |v: Option<&str>| -> Result<u64> {
                match v.map(str::parse::<u64>) {
                    Some(Ok(n)) => Ok(n),
                    _ => bail!("mount option {key} needs a number, as in {key}=1000"),
                }
            };
            match key {
                "allow_other" => self.allow_other = true,
                "no_allow_other" => self.allow_other = false,
                "default_permissions" => self.default_permissions = true,
                "no_default_permissions" => self.default_permissions = false,
                "ro" => self.ro = true,
                "rw" => self.ro = false,
                "uid" => self.uid = Some(u32::try_from(num(value)?)?),
                "gid" => self.gid = Some(u32::try_from(num(value)?)?),
                "cache_mb" => self.cache_mb = Some(num(value)?),
                "snapshot" => self.snapshot = Some(num(value)?),
                k if PASSED_OVER.contains(&k) || k.starts_with("x-") || k == "comment" => {}
                _ if sloppy => {}
                _ => bail!(
                    "unknown mount option {opt:?}; dustfs knows allow_other, no_allow_other, default_permissions, \
                     no_default_permissions, ro, rw, uid=N, gid=N, cache_mb=N, snapshot=N (and ignores mount(8)/fstab/systemd ones)"
                ),
            }
        }
        Ok(())
    }

    /// The options as a string `dustfs mount -o` accepts (to hand them to the background process).
    pub fn to_arg(&self) -> String {
        let mut v = vec![
            if self.allow_other {
                "allow_other"
            } else {
                "no_allow_other"
            }
            .to_string(),
            if self.default_permissions {
                "default_permissions"
            } else {
                "no_default_permissions"
            }
            .to_string(),
            if self.ro { "ro" } else { "rw" }.to_string(),
        ];
        if let Some(u) = self.uid {
            v.push(format!("uid={u}"));
        }
        if let Some(g) = self.gid {
            v.push(format!("gid={g}"));
        }
        if let Some(n) = self.snapshot {
            v.push(format!("snapshot={n}"));
        }
        if let Some(c) = self.cache_mb {
            v.push(format!("cache_mb={c}"));
        }
        v.join(",")
    }
}

/// What mount(8) asked the helper for.
#[derive(Debug)]
pub struct HelperArgs {
    /// The dustfs home.
    pub source: PathBuf,
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// Parsed options.
    pub opts: MountOpts,
    /// `-f`: do everything but the mount.
    pub fake: bool,
}

/// Parses `mount.dustfs SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS]` (flags may come anywhere).
pub fn parse_helper(args: &[String]) -> Result<HelperArgs> {
    let mut positional = Vec::new();
    let mut lists = Vec::new();
    let (mut sloppy, mut fake) = (false, false);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "-o" {
            match it.next() {
                Some(l) => lists.push(l.clone()),
                None => bail!("-o needs an option list"),
            }
        } else if let Some(l) = a.strip_prefix("-o") {
            lists.push(l.to_string());
        } else if a.starts_with('-') && a.len() > 1 {
            for f in a[1..].chars() {
                match f {
                    's' => sloppy = true,
                    'f' => fake = true,
                    'n' | 'v' => {}
                    other => bail!(
                        "unknown flag -{other}; usage: mount.dustfs SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS]"
                    ),
                }
            }
        } else {
            positional.push(a.clone());
        }
    }
    let [source, mountpoint] = positional.as_slice() else {
        bail!(
            "usage: mount.dustfs SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS] (SOURCE is the dustfs home directory)"
        );
    };
    let mut opts = MountOpts::default();
    for l in lists {
        opts.apply(&l, sloppy)?;
    }
    Ok(HelperArgs {
        source: source.into(),
        mountpoint: mountpoint.into(),
        opts,
        fake,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn fstab_style_invocations_parse() {
        let h = parse_helper(&args("/var/lib/dustfs /mnt/backup -o rw,_netdev,noauto,x-systemd.automount,uid=1000,cache_mb=64"))
            .unwrap();
        assert_eq!(h.source, PathBuf::from("/var/lib/dustfs"));
        assert_eq!(h.opts.uid, Some(1000));
        assert_eq!(h.opts.cache_mb, Some(64));
        assert!(!h.opts.ro);
        let h = parse_helper(&args("src mp -n -oro")).unwrap();
        assert!(h.opts.ro);
    }

    #[test]
    fn unknown_options_are_errors_unless_sloppy() {
        let e = parse_helper(&args("src mp -o bogus"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
        assert!(parse_helper(&args("src mp -s -o bogus")).is_ok());
        assert!(parse_helper(&args("src mp -o uid=abc")).is_err());
        assert!(parse_helper(&args("onlyone")).is_err());
    }

    #[test]
    fn options_round_trip_through_the_argument() {
        let mut o = MountOpts::default();
        o.apply("ro,gid=5,no_allow_other", false).unwrap();
        let mut back = MountOpts::default();
        back.apply(&o.to_arg(), false).unwrap();
        assert_eq!(back, o);
    }
}
