//! The restricted pickle reader on arbitrary bytes, as a unit with
//! --legacy-pickle meets them: the first byte picks the start layer.
#![no_main]

use dnet_codec::pickle::{read, write};
use dnet_codec::{parse_pickled_x, BOUNDARY_SHAPES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, bytes)) = data.split_first() else { return };
    let start = usize::from(first % 17);
    if let Ok(x) = parse_pickled_x(bytes, start, 64) {
        assert_eq!(x.shape[1..], BOUNDARY_SHAPES[start]);
        assert_eq!(x.data.len(), x.shape.iter().product::<usize>() * 4);
    }
    // What it reads, it writes back to the same tensor.
    if let Ok(tensor) = read(bytes) {
        let again = read(&write(tensor.dtype, &tensor.shape, &tensor.data)).expect("our own pickle reads");
        assert_eq!(again, tensor);
    }
});
