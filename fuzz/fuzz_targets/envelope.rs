//! A signed envelope and a contract grant: decoding and signature checks never panic, and
//! nothing the fuzzer makes up verifies.
#![no_main]
use dustfs_net::protocol::Envelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 64 {
        return;
    }
    let (grant, body) = data.split_at(64);
    if let Ok(env) = postcard::from_bytes::<Envelope>(body) {
        let again: Envelope = postcard::from_bytes(&postcard::to_allocvec(&env).expect("encode"))
            .expect("round trip");
        assert_eq!(again, env);
        let _ = env.verify();
        let _ = env.verify_grant(grant);
    }
});
