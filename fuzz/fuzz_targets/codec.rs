//! The tensor codec on arbitrary bytes: the first byte picks the start layer.
#![no_main]

use dnet_codec::{parse_x, XDtype, BOUNDARY_SHAPES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, bytes)) = data.split_first() else { return };
    // 0..=16: one past the last boundary, which must be refused, not panic.
    let start = usize::from(first % 17);
    if let Ok(x) = parse_x(bytes, start, 64) {
        let element = if x.dtype == XDtype::F32 { 4 } else { 2 };
        assert_eq!(x.data.len(), x.shape.iter().product::<usize>() * element);
        assert_eq!(x.shape[1..], BOUNDARY_SHAPES[start]);
        assert!((1..=64).contains(&x.shape[0]));
    }
});
