//! A metadata stream and its records as a restore reads them, and a manifest: never a panic.
#![no_main]
use dustfs_core::db;
use dustfs_core::fs::{BlockRecord, Inode, Manifest, check_stream};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = check_stream(data);
    let _ = db::decode::<Manifest>("meta", data);
    if let Ok(i) = db::decode::<Inode>("inodes", data) {
        assert_eq!(db::decode::<Inode>("inodes", &db::encode(&i)).ok(), Some(i));
    }
    if let Ok(b) = db::decode::<BlockRecord>("blocks", data) {
        assert_eq!(
            db::decode::<BlockRecord>("blocks", &db::encode(&b)).ok(),
            Some(b)
        );
    }
});
