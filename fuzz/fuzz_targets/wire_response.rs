//! A response frame as a customer receives it from a supplier that may lie.
#![no_main]
use dustfs_net::protocol::{decode_response, decode_response_owned, encode_response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The decoder that keeps a shard in the frame's buffer answers like the copying one.
    assert_eq!(decode_response_owned(data.to_vec()), decode_response(data));
    if let Ok(r) = decode_response(data) {
        assert_eq!(decode_response(&encode_response(&r)).ok(), Some(r));
    }
});
