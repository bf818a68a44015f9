//! A request frame as a supplier receives it: decoding never panics, and what decodes
//! re-encodes to a frame that decodes to the same request; envelopes are checked; the
//! borrowing store decoder agrees with the copying one.
#![no_main]
use dustfs_net::protocol::{Request, decode_request, decode_store, encode_request, encode_store};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The store decoder that borrows the shard's bytes answers like the copying one, and what
    // it reads re-encodes (borrowed) to the frame the copying encoder makes.
    if let Some((env, bytes)) = decode_store(data) {
        let owned = Request::Store { env: env.clone(), data: bytes.to_vec() };
        assert_eq!(decode_request(data).ok(), Some(owned.clone()));
        assert_eq!(encode_store(&env, bytes), encode_request(&owned));
    } else if let Ok(r) = decode_request(data) {
        assert!(!matches!(r, Request::Store { .. }), "a store request decode_store missed");
    }
    if let Ok(r) = decode_request(data) {
        assert_eq!(decode_request(&encode_request(&r)).ok(), Some(r.clone()));
        if let Request::Store { env, .. }
        | Request::Delete(env)
        | Request::List(env)
        | Request::Lease(env)
        | Request::DeleteRoot(env)
        | Request::Contract(env) = &r
        {
            let _ = env.verify();
        }
    }
});
