//! Choosing an exit's threshold from how its answers match a reference:
//! the method of `test-unit calibrate` (docs/calibrate-and-plan.md), offline
//! over a data set and live over a unit's own traffic, in one
//! implementation. No libtorch, no network: the offline tool and every
//! unit's gRPC edge link it.
//!
//! Layout:
//! - `choice`: how far one exit's threshold can go down while a target holds (calibrate's step).
//! - `bound`: Wilson's score bounds of a share, and the least window that can prove a target.
//! - `live`: a unit's live calibration: a window of outcomes, the threshold it proves, hysteresis.

pub mod bound;
pub mod choice;
pub mod live;
