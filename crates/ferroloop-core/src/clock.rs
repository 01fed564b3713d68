//! The loop's clock and the conversion of timeouts for the poller.
//!
//! Invariants:
//! - [`now`] reads `CLOCK_MONOTONIC`, the clock behind Python's `time.monotonic()`, so
//!   `loop.time()` and user code agree on deadlines;
//! - [`timeout_millis`] rounds *up*: a poll never returns before the deadline it was computed
//!   for (a timer must not fire early), and a positive timeout is never turned into 0 (the loop
//!   must not spin).

/// Resolution of [`now`], in seconds (what `time.get_clock_info('monotonic').resolution` says).
pub const RESOLUTION: f64 = 1e-9;

/// The longest single poll, in seconds; CPython's `MAXIMUM_SELECT_TIMEOUT` (24 hours).
pub const MAXIMUM_SELECT_TIMEOUT: f64 = 24.0 * 3600.0;

/// Seconds on the monotonic clock.
#[inline]
pub fn now() -> f64 {
    crate::sys::monotonic()
}

/// Converts a timeout in seconds to the milliseconds `epoll_wait` takes, rounding up.
///
/// `None` (nothing scheduled) blocks (-1); negative and NaN timeouts become 0; anything above
/// [`MAXIMUM_SELECT_TIMEOUT`] is capped.
pub fn timeout_millis(timeout: Option<f64>) -> i32 {
    match timeout {
        None => -1,
        Some(t) if t.is_nan() || t <= 0.0 => 0,
        Some(t) => (t.min(MAXIMUM_SELECT_TIMEOUT) * 1000.0).ceil() as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_up_never_to_zero() {
        assert_eq!(timeout_millis(Some(1e-9)), 1);
        assert_eq!(timeout_millis(Some(0.0015)), 2);
        assert_eq!(timeout_millis(Some(0.001)), 1);
        assert_eq!(timeout_millis(Some(0.0)), 0);
        assert_eq!(timeout_millis(Some(-3.0)), 0);
        assert_eq!(timeout_millis(Some(f64::NAN)), 0);
        assert_eq!(timeout_millis(None), -1);
        assert_eq!(timeout_millis(Some(f64::INFINITY)), 86_400_000);
    }
}
