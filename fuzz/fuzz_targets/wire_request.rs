//! A request frame as a supplier receives it: decoding never panics, and what decodes
//! re-encodes to a frame that decodes to the same request; envelopes are checked.
#![no_main]
use dustfs_net::protocol::{Request, decode_request, encode_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
