//! A response frame as a customer receives it from a supplier that may lie.
#![no_main]
use dustfs_net::protocol::{decode_response, encode_response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = decode_response(data) {
        assert_eq!(decode_response(&encode_response(&r)).ok(), Some(r));
    }
});
