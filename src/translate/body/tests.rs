//! The streaming body's life, on paused time: a completed stream settles before its end is
//! written, silence becomes keep-alives and then a timeout, a dropped body is a cancelled
//! stream, upstream failures and the shutdown end it in-band — and the owner hears each
//! ending exactly once.

use std::sync::{Arc, Mutex};

use http_body_util::BodyExt;
use tokio::sync::{mpsc, oneshot};

use super::*;

/// An upstream body fed by the test.
struct FakeUpstream(mpsc::UnboundedReceiver<Result<Bytes, String>>);

impl Body for FakeUpstream {
    type Data = Bytes;
    type Error = String;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, String>>> {
        self.0
            .poll_recv(cx)
            .map(|item| item.map(|r| r.map(Frame::data)))
    }
}

/// A finish reason as the lines write it.
fn label(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Complete | FinishReason::StopSequence(_) => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
    }
}

/// Writes readable lines: `c:<text>`, `r:<text>`, `finish:<reason>`, `error:<code>`,
/// `keep-alive`.
#[derive(Default)]
struct Lines {
    pending: Vec<String>,
}

impl Emit for Lines {
    fn reasoning(&mut self, text: &str) {
        self.pending.push(format!("r:{text}"));
    }
    fn content(&mut self, text: &str) {
        self.pending.push(format!("c:{text}"));
    }
}

impl Render for Lines {
    fn finish(&mut self, reason: FinishReason, _usage: Usage) {
        self.pending.push(format!("finish:{}", label(reason)));
    }
    fn error(&mut self, e: &ProxyError) {
        self.pending
            .push(format!("error:{}", e.code().unwrap_or_default()));
    }
    fn keep_alive(&mut self) {
        self.pending.push("keep-alive".to_owned());
    }
    fn take(&mut self) -> Option<Bytes> {
        let lines: String = self.pending.drain(..).map(|l| l + "\n").collect();
        (!lines.is_empty()).then(|| Bytes::from(lines))
    }
    fn buffered(&self) -> usize {
        self.pending.iter().map(|l| l.len() + 1).sum()
    }
}

type Told = Arc<Mutex<Vec<String>>>;

/// Records how the stream ended; a completed stream's work waits for `release`.
struct Owner {
    told: Told,
    release: Option<oneshot::Receiver<()>>,
}

impl StreamEnd<()> for Owner {
    fn ended(self, outcome: Outcome<'_>, _pipeline: &mut Pipeline<()>) -> Option<Settle> {
        let what = match outcome {
            Outcome::Completed { reason, .. } => format!("completed:{}", label(reason)),
            Outcome::Failed(e) => format!("failed:{}", e.code().unwrap_or_default()),
            Outcome::Cancelled => "cancelled".to_owned(),
        };
        self.told.lock().unwrap().push(what);
        let release = self.release?;
        let told = self.told.clone();
        Some(Box::pin(async move {
            let _ = release.await;
            told.lock().unwrap().push("settled".to_owned());
        }))
    }
}

const IDLE: Duration = Duration::from_secs(60);
const KEEP_ALIVE: Duration = Duration::from_secs(15);

type TestBody = TranslateBody<FakeUpstream, (), Lines, Owner>;

fn body(
    release: Option<oneshot::Receiver<()>>,
) -> (TestBody, mpsc::UnboundedSender<Result<Bytes, String>>, Told) {
    let (tx, rx) = mpsc::unbounded_channel();
    let told = Told::default();
    let stream = UpstreamStream::new(FakeUpstream(rx), Pipeline::new((), 0), IDLE);
    let body = TranslateBody::new(stream, Lines::default(), Some(KEEP_ALIVE)).owned_by(Owner {
        told: told.clone(),
        release,
    });
    (body, tx, told)
}

fn frame(json: &str) -> Result<Bytes, String> {
    Ok(Bytes::from(format!("data: {json}\n\n")))
}

const CREATED: &str = r#"{"response.created":{"chat_id":"c","parent_id":"p","response_id":"r","response_index":"0"}}"#;

fn answer(text: &str) -> String {
    format!(
        r#"{{"choices":[{{"delta":{{"content":"{text}","phase":"answer","status":"typing"}}}}],"response_id":"r"}}"#
    )
}

const FINISHED: &str = r#"{"choices":[{"delta":{"content":"","phase":"answer","status":"finished"}}],"response_id":"r"}"#;

/// The next frame as text, or `None` at the end; `Pending` as the string "pending".
fn poll_text(b: &mut TestBody) -> Option<String> {
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    match Pin::new(b).poll_frame(&mut cx) {
        Poll::Ready(Some(Ok(f))) => {
            let text = String::from_utf8(f.into_data().unwrap().to_vec()).unwrap();
            Some(text.trim_end().to_owned())
        }
        Poll::Ready(None) => None,
        Poll::Pending => Some("pending".to_owned()),
        Poll::Ready(Some(Err(e))) => match e {},
    }
}

#[tokio::test(start_paused = true)]
async fn a_completed_stream_settles_before_its_end_is_written() {
    let (release_tx, release_rx) = oneshot::channel();
    let (mut b, tx, told) = body(Some(release_rx));
    tx.send(frame(CREATED)).unwrap();
    tx.send(frame(&answer("Hi"))).unwrap();
    tx.send(frame(FINISHED)).unwrap();
    assert_eq!(poll_text(&mut b).as_deref(), Some("c:Hi"));
    // The owner knows; the end waits for its work.
    assert_eq!(poll_text(&mut b).as_deref(), Some("pending"));
    assert_eq!(*told.lock().unwrap(), ["completed:stop"]);
    release_tx.send(()).unwrap();
    assert_eq!(poll_text(&mut b).as_deref(), Some("finish:stop"));
    assert_eq!(poll_text(&mut b), None);
    assert!(b.is_end_stream());
    drop(b);
    assert_eq!(
        *told.lock().unwrap(),
        ["completed:stop", "settled"],
        "told once"
    );
}

#[tokio::test(start_paused = true)]
async fn silence_gets_keep_alives_then_an_in_band_timeout() {
    let (b, tx, told) = body(None);
    tx.send(frame(CREATED)).unwrap();
    tx.send(frame(&answer("Hi"))).unwrap();
    let start = Instant::now();
    let mut frames = Vec::new();
    let mut b = b;
    while let Some(f) = b.frame().await {
        let text = String::from_utf8(f.unwrap().into_data().unwrap().to_vec()).unwrap();
        frames.push((start.elapsed().as_secs(), text.trim_end().to_owned()));
    }
    // Keep-alives every 15 s of silence, then the idle timeout at 60 s.
    assert_eq!(
        frames,
        [
            (0, "c:Hi".to_owned()),
            (15, "keep-alive".to_owned()),
            (30, "keep-alive".to_owned()),
            (45, "keep-alive".to_owned()),
            (60, "error:upstream_timeout".to_owned()),
        ]
    );
    assert_eq!(*told.lock().unwrap(), ["failed:upstream_timeout"]);
    drop(tx);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_body_is_a_cancelled_stream() {
    let (mut b, tx, told) = body(None);
    tx.send(frame(CREATED)).unwrap();
    tx.send(frame(&answer("Hi"))).unwrap();
    assert_eq!(poll_text(&mut b).as_deref(), Some("c:Hi"));
    drop(b);
    assert_eq!(*told.lock().unwrap(), ["cancelled"]);
    // The upstream body went with it: the sender sees a closed channel.
    assert!(tx.send(frame(FINISHED)).is_err());
}

#[tokio::test(start_paused = true)]
async fn an_upstream_failure_ends_the_stream_in_band() {
    let (b, tx, told) = body(None);
    tx.send(frame(CREATED)).unwrap();
    tx.send(frame(&answer("Hi"))).unwrap();
    tx.send(Err("connection reset".to_owned())).unwrap();
    let text = b.collect().await.unwrap().to_bytes();
    assert_eq!(text, "c:Hi\nerror:upstream_unreachable\n");
    assert_eq!(*told.lock().unwrap(), ["failed:upstream_unreachable"]);
}

#[tokio::test(start_paused = true)]
async fn the_shutdown_signal_ends_open_streams() {
    let (abort_tx, abort_rx) = oneshot::channel::<()>();
    let (b, tx, told) = body(None);
    let mut b = b.abort_on(async move {
        let _ = abort_rx.await;
    });
    tx.send(frame(CREATED)).unwrap();
    tx.send(frame(&answer("Hi"))).unwrap();
    assert_eq!(poll_text(&mut b).as_deref(), Some("c:Hi"));
    assert_eq!(poll_text(&mut b).as_deref(), Some("pending"));
    abort_tx.send(()).unwrap();
    assert_eq!(
        poll_text(&mut b).as_deref(),
        Some("error:server_shutting_down")
    );
    assert_eq!(poll_text(&mut b), None);
    assert_eq!(*told.lock().unwrap(), ["failed:server_shutting_down"]);
}

#[tokio::test(start_paused = true)]
async fn priming_failures_are_the_callers_and_short_streams_complete_once_owned() {
    // An error before any content: `prime` returns it; no owner exists to be told.
    let (tx, rx) = mpsc::unbounded_channel();
    let stream = UpstreamStream::new(FakeUpstream(rx), Pipeline::new((), 0), IDLE);
    let mut b: TestBody = TranslateBody::new(stream, Lines::default(), None);
    tx.send(frame(
        r#"{"success":false,"data":{"code":"Bad_Request","details":"x"}}"#,
    ))
    .unwrap();
    assert!(b.prime().await.is_err());

    // A whole answer arrives while priming: the owner attached afterwards hears of it.
    let (tx, rx) = mpsc::unbounded_channel();
    let told = Told::default();
    let stream = UpstreamStream::new(FakeUpstream(rx), Pipeline::new((), 0), IDLE);
    let mut b: TestBody = TranslateBody::new(stream, Lines::default(), None);
    tx.send(Ok(Bytes::from(format!(
        "data: {CREATED}\n\ndata: {}\n\ndata: {FINISHED}\n\n",
        answer("Hi")
    ))))
    .unwrap();
    b.prime().await.unwrap();
    let b = b.owned_by(Owner {
        told: told.clone(),
        release: None,
    });
    assert_eq!(b.collect().await.unwrap().to_bytes(), "c:Hi\nfinish:stop\n");
    assert_eq!(*told.lock().unwrap(), ["completed:stop"]);
}

#[tokio::test(start_paused = true)]
async fn everything_already_received_leaves_as_one_frame() {
    let (mut b, tx, told) = body(None);
    tx.send(frame(CREATED)).unwrap();
    for word in ["one", "two", "three"] {
        tx.send(frame(&answer(word))).unwrap();
    }
    // Three upstream chunks at hand: one frame (one write), not three.
    assert_eq!(poll_text(&mut b).as_deref(), Some("c:one\nc:two\nc:three"));
    assert_eq!(poll_text(&mut b).as_deref(), Some("pending"));
    // The end of a stream with nothing to settle joins the last content.
    tx.send(frame(&answer("four"))).unwrap();
    tx.send(frame(FINISHED)).unwrap();
    assert_eq!(poll_text(&mut b).as_deref(), Some("c:four\nfinish:stop"));
    assert_eq!(poll_text(&mut b), None);
    assert_eq!(*told.lock().unwrap(), ["completed:stop"]);
}

#[tokio::test(start_paused = true)]
async fn the_first_token_never_waits_for_more_input() {
    let (mut b, tx, _told) = body(None);
    tx.send(frame(CREATED)).unwrap();
    tx.send(frame(&answer("Hi"))).unwrap();
    // Nothing more has arrived: what there is goes out now.
    assert_eq!(poll_text(&mut b).as_deref(), Some("c:Hi"));
    assert_eq!(poll_text(&mut b).as_deref(), Some("pending"));
    tx.send(frame(&answer("there"))).unwrap();
    assert_eq!(poll_text(&mut b).as_deref(), Some("c:there"));
}

#[tokio::test(start_paused = true)]
async fn a_large_backlog_is_sent_in_bounded_frames() {
    let (mut b, tx, _told) = body(None);
    tx.send(frame(CREATED)).unwrap();
    let word = "x".repeat(1000);
    for _ in 0..200 {
        tx.send(frame(&answer(&word))).unwrap();
    }
    tx.send(frame(FINISHED)).unwrap();
    let mut frames = Vec::new();
    while let Some(text) = poll_text(&mut b) {
        // tokio's cooperative budget makes the fake upstream yield now and then: let the
        // runtime refill it, then poll again.
        if text == "pending" {
            tokio::task::yield_now().await;
        } else {
            frames.push(text);
        }
    }
    // 200 KB of output: a few frames, none much over the cap, nothing lost or reordered.
    assert!((4..=8).contains(&frames.len()), "{} frames", frames.len());
    assert!(frames
        .iter()
        .all(|f| f.len() < MAX_FRAME_BYTES + word.len() + 8));
    let lines: Vec<&str> = frames.iter().flat_map(|f| f.lines()).collect();
    assert_eq!(lines.len(), 201);
    assert!(lines[..200].iter().all(|l| *l == format!("c:{word}")));
    assert_eq!(lines[200], "finish:stop");
}
