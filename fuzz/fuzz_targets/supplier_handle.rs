//! Any frame handed to a supplier's store (on a scratch directory): it always answers with a
//! well-formed response and never panics.
#![no_main]
use std::sync::OnceLock;

use dustfs_net::protocol::decode_response;
use dustfs_net::supplier::ShardDir;
use libfuzzer_sys::fuzz_target;

static DIR: OnceLock<(tempfile::TempDir, ShardDir)> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let (_, d) = DIR.get_or_init(|| {
        let tmp = tempfile::tempdir().expect("scratch directory");
        let key = dustfs_net::protocol::signing_key_from_seed(&[7; 32]);
        let d = ShardDir::open(tmp.path(), 1 << 20, key).expect("shard store");
        (tmp, d)
    });
    let answer = d.handle(data);
    assert!(decode_response(&answer.into_vec()).is_ok());
});
