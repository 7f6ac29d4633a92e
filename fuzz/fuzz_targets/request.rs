//! A worker's request handling before the model, on arbitrary bytes: protobuf
//! decoding, the start-layer range of a unit, then the codec. The first byte
//! picks the unit's exit layer.
#![no_main]

use dnet_codec::{parse_request, parse_x};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, body)) = data.split_first() else { return };
    let exit = 1 + usize::from(first % 16);
    match parse_request(body, exit) {
        Ok((request, start)) => {
            assert!(start < exit);
            let _ = parse_x(&request.x, start, 64);
        }
        Err(message) => assert!(!message.is_empty()),
    }
});
