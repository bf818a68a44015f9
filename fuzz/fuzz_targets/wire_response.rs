//! A response frame as a customer receives it from a supplier that may lie.
#![no_main]
use dustfs_net::protocol::{
    MAX_FRAME, decode_response, decode_response_frame, decode_response_owned, encode_response,
    read_response_frame,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The decoder that keeps a shard in the frame's buffer answers like the copying one.
    assert_eq!(decode_response_owned(data.to_vec()), decode_response(data));
    // So does the codec's reader, which reads a shard answer's bytes apart from its head.
    if data.len() <= MAX_FRAME {
        let mut wire = (data.len() as u32).to_be_bytes().to_vec();
        wire.extend_from_slice(data);
        let read = futures::executor::block_on(read_response_frame(&mut futures::io::Cursor::new(wire)))
            .expect("a whole frame reads");
        assert_eq!(read.len(), data.len());
        assert_eq!(decode_response_frame(read), decode_response(data));
    }
    if let Ok(r) = decode_response(data) {
        assert_eq!(decode_response(&encode_response(&r)).ok(), Some(r));
    }
});
