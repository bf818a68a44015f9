//! A DHT record another peer puts: the admission check never panics and admits nothing the
//! fuzzer makes up.
#![no_main]
use dustfs_net::host::admit_record;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let (key, value) = rest.split_at((n as usize).min(rest.len()));
    let (value, kept) = value.split_at(value.len() / 2);
    assert!(admit_record(key, value, Some(kept)).is_err());
    assert!(admit_record(key, value, None).is_err());
});
