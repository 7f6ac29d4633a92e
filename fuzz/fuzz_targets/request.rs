//! What a unit reads from the network before the model, on arbitrary bytes:
//! protobuf decoding, the start-layer range of a unit, the request's own
//! thresholds, then the codec; and, as the forwarding unit reads a reply's
//! `answered` and the next unit's `result`, answer rows and their merge. The
//! first byte picks the unit's exit layer.
#![no_main]

use dnet_codec::{check_thresholds, parse_request, parse_x, Answers};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, body)) = data.split_first() else { return };
    let exit = 1 + usize::from(first % 16);
    match parse_request(body, exit) {
        Ok((request, start)) => {
            assert!(start < exit);
            let _ = check_thresholds(&request.thresholds);
            let _ = parse_x(&request.x, start, 64);
        }
        Err(message) => assert!(!message.is_empty()),
    }
    if let Ok(answers) = Answers::parse(body, exit as u64) {
        let encoded = answers.encode().expect("rows that parsed encode");
        // Compared as bytes: probabilities may be NaN here.
        let again = Answers::parse(&encoded, 0).expect("our encoding parses").encode();
        assert_eq!(again.as_ref(), Ok(&encoded));
        let _ = answers.clone().merge(&answers);
        let _ = (answers.deepest_exit(), answers.min_confidence());
    }
});
