//! The hand-written frame reader (`qwen::scan::frame`) against serde_json, its authority,
//! on one SSE data payload.
//!
//! Invariants (the reader's contract, `src/qwen/scan.rs`):
//! * whenever the reader accepts a payload, serde_json accepts it too and builds the
//!   identical `Frame` (compared by their `Debug` output, as `tests/frame_scan.rs` does);
//! * it accepts no error-shaped frame (`success`, `data`, `error`, `ret`, `code`,
//!   `details`: those go to the cold path);
//! * `Frame::parse` (reader, then serde) never panics, and agrees with serde on success.

#![no_main]

use libfuzzer_sys::fuzz_target;
use qwen_proxy::qwen::frame::Frame;
use qwen_proxy::qwen::scan;

fuzz_target!(|data: &[u8]| {
    let reference = serde_json::from_slice::<Frame<'_>>(data);
    if let Ok(fast) = scan::frame(data) {
        match &reference {
            Ok(reference) => assert_eq!(
                format!("{fast:?}"),
                format!("{reference:?}"),
                "the frame reader differs from serde on {:?}",
                String::from_utf8_lossy(data)
            ),
            Err(e) => panic!(
                "the frame reader accepted what serde rejects ({e}): {:?}",
                String::from_utf8_lossy(data)
            ),
        }
        // Error shapes always take the cold path.
        assert!(
            fast.success.is_none()
                && fast.data.is_none()
                && fast.error.is_none()
                && fast.ret.is_none()
                && fast.code.is_none()
                && fast.details.is_none(),
            "an error-shaped frame took the fast path: {:?}",
            String::from_utf8_lossy(data)
        );
    }
    match (Frame::parse(data), &reference) {
        (Ok(parsed), Ok(reference)) => {
            assert_eq!(format!("{parsed:?}"), format!("{reference:?}"))
        }
        (Ok(_), Err(e)) => panic!(
            "Frame::parse accepted what serde rejects ({e}): {:?}",
            String::from_utf8_lossy(data)
        ),
        (Err(_), Ok(_)) => panic!(
            "Frame::parse rejected what serde accepts: {:?}",
            String::from_utf8_lossy(data)
        ),
        (Err(_), Err(_)) => {}
    }
});
