//! A root record from a supplier or the DHT: verification, the sequence peek and opening the
//! manifest never panic, and nothing the fuzzer makes up verifies.
#![no_main]
use dustfs_core::keys::MasterSecret;
use dustfs_core::root::{RootRecord, open_manifest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(secret) = MasterSecret::from_bytes(&[9; 32]) else {
        return;
    };
    let keys = secret.derive();
    let user = keys.public().to_bytes();
    assert!(RootRecord::verify(data, &user).is_err());
    let _ = RootRecord::peek_seq(data);
    let _ = open_manifest(&keys, data);
});
