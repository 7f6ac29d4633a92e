//! The restricted pickle reader on arbitrary bytes, as a unit with
//! --legacy-pickle meets them: the first byte picks the start layer, and the
//! unit's default --max-request-samples (64) bounds the tensor. scripts/fuzz.sh
//! runs this target under a malloc limit, so an allocation the bound does not
//! cover fails the run.
#![no_main]

use dnet_codec::pickle::{read, write};
use dnet_codec::{parse_pickled_x, BOUNDARY_SHAPES};
use libfuzzer_sys::fuzz_target;

/// A unit's default --max-request-samples.
const MAX_BATCH: usize = 64;
/// The element bound of the plain read: 8 MB of int64 categories at most.
const MAX_ELEMENTS: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Some((&first, bytes)) = data.split_first() else { return };
    let start = usize::from(first % 17);
    if let Ok(x) = parse_pickled_x(bytes, start, MAX_BATCH) {
        assert_eq!(x.shape[1..], BOUNDARY_SHAPES[start]);
        assert!(x.shape[0] <= MAX_BATCH);
        assert_eq!(x.data.len(), x.shape.iter().product::<usize>() * 4);
    }
    // What it reads, within the bound, it writes back to the same tensor.
    match read(bytes, MAX_ELEMENTS) {
        Ok(tensor) => {
            assert!(tensor.shape.iter().product::<usize>() <= MAX_ELEMENTS);
            let again = read(&write(tensor.dtype, &tensor.shape, &tensor.data), MAX_ELEMENTS);
            assert_eq!(again.as_ref(), Ok(&tensor), "our own pickle reads");
        }
        Err(error) => assert!(error.to_string().len() <= dnet_codec::pickle::MAX_MESSAGE_BYTES),
    }
});
