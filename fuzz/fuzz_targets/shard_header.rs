//! Shard bytes as fetched from a supplier: the header parser never panics, and a parsed shard
//! rebuilds to the same bytes.
#![no_main]
use dustfs_core::shard::{ShardId, build, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((h, payload)) = parse(data, None) {
        assert_eq!(build(h, payload), data);
        assert!(parse(data, Some(&ShardId::of(data))).is_ok());
    }
    let _ = parse(data, Some(&ShardId([0; 32])));
});
