//! Builds the byte-level script of one simulated completion: which frames, in how many
//! writes, with which pauses. Pure and deterministic (the `split` offsets come from a
//! PRNG seeded by the prompt), so a failing test can be replayed exactly.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;

use super::answer;
use super::scenario::{Fault, Scenario};
use super::tools::{self, SimTool};
use super::wire::{self, Usage};
use super::SimTiming;
use crate::translate::limits::estimate_quarter_tokens;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Write(Bytes),
    Pause(Duration),
    /// Abort the connection mid-response.
    Reset,
}

/// Inputs of one completion.
pub struct Generation<'a> {
    pub chat_id: &'a str,
    pub user_node_id: &'a str,
    pub response_id: &'a str,
    pub alt_response_id: &'a str,
    pub prompt: &'a str,
    /// Tokens of the documents the message attaches: read like the prompt (and paid for
    /// in prefill), but not what the answer is derived from.
    pub read_tokens: u64,
    pub thinking: bool,
    pub search: bool,
    pub scenario: &'a Scenario,
    /// The tools the chat's prompt described (remembered across turns).
    pub tools: &'a [SimTool],
    pub timing: &'a SimTiming,
    pub now_secs: u64,
}

/// Hidden system prompt the upstream counts in `input_tokens` (§5.4).
const HIDDEN_PROMPT_TOKENS: u64 = 1_000;

pub fn build(g: &Generation<'_>) -> VecDeque<Step> {
    let mut frames: Vec<(String, Duration)> = Vec::new();
    let delay = g.scenario.delay.unwrap_or(g.timing.frame_delay);
    let sc = g.scenario;
    let ts = g.now_secs;
    let prompt_tokens = answer::tokens(g.prompt) + g.read_tokens;
    let input = HIDDEN_PROMPT_TOKENS + prompt_tokens;
    // The model reads what this completion sends before it writes: the chat's earlier turns
    // are read already (the upstream keeps the chat's context), so a continued turn pays for
    // its new messages only, a fresh chat for the whole folded history.
    let ttft = g.scenario.ttft.unwrap_or(g.timing.ttft)
        + prefill(g.timing.prefill_per_1k_tokens, prompt_tokens);

    frames.push((
        wire::response_created(g.chat_id, g.user_node_id, g.response_id, 0),
        Duration::ZERO,
    ));
    if sc.dual {
        frames.push((
            wire::response_created(g.chat_id, g.user_node_id, g.alt_response_id, 1),
            Duration::ZERO,
        ));
    }
    if sc.fault == Some(Fault::Empty) {
        return into_steps(frames, sc, g.prompt);
    }
    if let Some(Fault::RateLimitedFrame(h)) = sc.fault {
        frames.push((
            wire::event(&wire::rate_limited_json(g.response_id, h)),
            ttft,
        ));
        return into_steps(frames, sc, g.prompt);
    }
    if sc.fault == Some(Fault::InvalidInput) {
        frames.push((wire::event(wire::INVALID_INPUT_FRAME), ttft));
        return into_steps(frames, sc, g.prompt);
    }

    let mut reasoning_tokens = None;
    let mut first_pause = ttft;
    if g.thinking || sc.think_reply.is_some() {
        let (titles, thoughts) = match &sc.think_reply {
            // Paragraphs arrive one by one, as the cumulative summary list grows.
            Some(text) => {
                let thoughts: Vec<String> = text.split("\n\n").map(str::to_owned).collect();
                (vec!["Thinking".to_owned(); thoughts.len()], thoughts)
            }
            None => answer::thinking(g.prompt),
        };
        let mut r = 0;
        for n in 1..=thoughts.len() {
            r += answer::tokens(&thoughts[n - 1]) * 40;
            let usage = Usage {
                input,
                output: r + 2,
                reasoning: Some(r),
            };
            frames.push((
                wire::thinking(g.response_id, &titles[..n], &thoughts[..n], usage, ts),
                first_pause,
            ));
            first_pause = delay;
        }
        frames.push((
            wire::finished(g.response_id, "thinking_summary", Some(ts)),
            delay,
        ));
        reasoning_tokens = Some(r);
    }
    if g.search {
        for f in wire::web_search(g.response_id, &answer::last_line(g.prompt), ts) {
            frames.push((f, first_pause));
            first_pause = delay;
        }
    }

    let text = answer_text(g);
    let alt = answer::alternative_answer(g.prompt);
    let pieces = chunk_chars(&text, g.timing.chunk_chars);
    let alt_pieces = chunk_chars(&alt, g.timing.chunk_chars);
    let mut meter = AnswerUsage {
        input,
        reasoning: reasoning_tokens.unwrap_or(0),
        quarters: 0,
    };
    let partial_limit = 2;
    for (i, piece) in pieces.iter().enumerate() {
        frames.push((
            wire::delta(g.response_id, "answer", piece, meter.add(piece), i, ts),
            first_pause,
        ));
        first_pause = delay;
        if sc.dual {
            if let Some(alt) = alt_pieces.get(i) {
                let u = Usage {
                    input,
                    output: answer::tokens(alt),
                    reasoning: None,
                };
                frames.push((
                    wire::delta(g.alt_response_id, "answer", alt, u, i, ts),
                    Duration::ZERO,
                ));
            }
        }
        if i + 1 == 1 {
            if let Some(stall) = sc.stall {
                frames.push((String::new(), stall));
            }
        }
        if i + 1 == partial_limit || i + 1 == pieces.len() {
            if let Some(f) = midstream_fault_frame(sc.fault, g.response_id) {
                frames.push((f, delay));
                return into_steps(frames, sc, g.prompt);
            }
            if sc.fault == Some(Fault::Reset) {
                let mut steps = into_steps(frames, sc, g.prompt);
                let half = wire::delta(
                    g.response_id,
                    "answer",
                    "cut",
                    Usage {
                        input,
                        output: 0,
                        reasoning: None,
                    },
                    0,
                    ts,
                );
                steps.push_back(Step::Write(Bytes::from(half[..half.len() / 2].to_owned())));
                steps.push_back(Step::Pause(Duration::from_millis(1)));
                steps.push_back(Step::Reset);
                return steps;
            }
        }
    }
    if !sc.native_calls.is_empty() {
        for call in &sc.native_calls {
            let (name, arguments) = tools::resolve(call, g.tools);
            for snapshot in snapshots(&arguments) {
                frames.push((
                    wire::intercepted_call(g.response_id, &name, snapshot, ts),
                    delay,
                ));
            }
            frames.push((wire::intercepted_result(g.response_id, &name, ts), delay));
        }
        // The model goes on with the platform's "does not exists" in its context.
        let last = sc.native_calls.last().map(|c| tools::resolve(c, g.tools).0);
        let after = format!(
            "Tool {} does not exists. {AFTER_INTERCEPTION}",
            last.unwrap_or_default()
        );
        for (i, piece) in chunk_chars(&after, g.timing.chunk_chars).iter().enumerate() {
            frames.push((
                wire::delta(g.response_id, "answer", piece, meter.add(piece), i, ts),
                delay,
            ));
        }
    }
    let usage = meter.now();
    frames.push((wire::empty_typing(g.response_id, usage, ts), delay));
    frames.push((wire::empty_typing(g.response_id, usage, ts), Duration::ZERO));
    if sc.dual {
        frames.push((
            wire::finished(g.alt_response_id, "answer", None),
            Duration::ZERO,
        ));
    }
    frames.push((
        wire::finished(g.response_id, "answer", None),
        Duration::ZERO,
    ));
    if sc.done {
        frames.push(("data: [DONE]\n\n".to_owned(), Duration::ZERO));
    }
    into_steps(frames, sc, g.prompt)
}

/// The in-stream error frame of a fault that strikes after some content, if `fault` is one.
pub(super) fn midstream_fault_frame(fault: Option<Fault>, response_id: &str) -> Option<String> {
    match fault? {
        Fault::InternalError => Some(wire::event(wire::INTERNAL_ERROR_FRAME)),
        Fault::QuotaMidstream => Some(wire::event(wire::QUOTA_FRAME)),
        Fault::ModerationOutput => Some(wire::event(wire::MODERATION_OUTPUT_FRAME)),
        Fault::RateLimitedAfter(h) => Some(wire::event(&wire::rate_limited_json(response_id, h))),
        _ => None,
    }
}

/// The time to read `tokens` prompt tokens at `per_1k` per thousand.
pub fn prefill(per_1k: Duration, tokens: u64) -> Duration {
    per_1k.mul_f64(tokens as f64 / 1_000.0)
}

/// The cumulative usage of an answer as it is written, in quarter tokens: recounting the
/// whole text per frame would make long answers quadratic.
struct AnswerUsage {
    input: u64,
    /// Tokens of the thinking before the answer.
    reasoning: u64,
    quarters: u64,
}

impl AnswerUsage {
    fn add(&mut self, piece: &str) -> Usage {
        self.quarters += estimate_quarter_tokens(piece);
        self.now()
    }

    fn now(&self) -> Usage {
        Usage {
            input: self.input,
            output: self.reasoning + self.quarters.div_ceil(4),
            reasoning: None,
        }
    }
}

/// What the model says after repeating the platform's answer to its native call.
pub const AFTER_INTERCEPTION: &str =
    "It seems the tool is not available right now, so I will answer without it.";

/// The answer phase's text: the scripted reply or the derived answer, then the calls; with
/// web search, citing sources 1 and 2 (`answer.rs`).
fn answer_text(g: &Generation<'_>) -> String {
    let sc = g.scenario;
    let mut text = match (&sc.reply, sc.long) {
        (Some(reply), _) => reply.clone(),
        (None, _) if sc.echo => answer::last_line(g.prompt),
        (None, _) if !sc.calls.is_empty() => "I will use a tool for this.\n".to_owned(),
        (None, _) if !sc.native_calls.is_empty() => "Let me check that.\n".to_owned(),
        (None, Some(n)) => answer::long_answer(n),
        (None, None) => answer::answer(g.prompt),
    };
    if g.search {
        text = answer::cite_first(&text);
    }
    for call in &sc.calls {
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        let (name, arguments) = tools::resolve(call, g.tools);
        text.push_str(&tools::call_block(&name, &arguments));
        text.push('\n');
    }
    if g.search {
        text.push_str("[[2]]");
    }
    text
}

/// Cumulative snapshots of a native call's arguments, the last one repeated (§3.7).
fn snapshots(arguments: &str) -> Vec<&str> {
    let cuts: Vec<usize> = arguments.char_indices().map(|(i, _)| i).collect();
    let mut out: Vec<&str> = [1, 2]
        .iter()
        .filter_map(|k| cuts.get(cuts.len() * k / 3).map(|&at| &arguments[..at]))
        .filter(|s| !s.is_empty())
        .collect();
    out.push(arguments);
    out.push(arguments);
    out
}

/// Split text into pieces of `n` characters (never inside a character).
fn chunk_chars(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars.chunks(n.max(1)).map(|c| c.iter().collect()).collect()
}

/// Frames → writes. With `split`, every frame is cut at pseudo-random byte offsets
/// (inside UTF-8 sequences and inside `data:` too) into separate writes.
pub(super) fn into_steps(
    frames: Vec<(String, Duration)>,
    sc: &Scenario,
    seed_text: &str,
) -> VecDeque<Step> {
    let mut rng = XorShift::new(seed_text);
    let mut steps = VecDeque::new();
    for (frame, pause) in frames {
        if !pause.is_zero() {
            steps.push_back(Step::Pause(pause));
        }
        if frame.is_empty() {
            continue;
        }
        let bytes = Bytes::from(frame);
        if let Some(gap) = sc.drip {
            for at in 0..bytes.len() {
                steps.push_back(Step::Write(bytes.slice(at..at + 1)));
                steps.push_back(Step::Pause(gap));
            }
            continue;
        }
        if !sc.split {
            steps.push_back(Step::Write(bytes));
            continue;
        }
        let mut at = 0;
        while at < bytes.len() {
            let len = 1 + (rng.next() % 23) as usize;
            let end = (at + len).min(bytes.len());
            steps.push_back(Step::Write(bytes.slice(at..end)));
            // A pause makes hyper flush, so each piece is its own TCP write.
            steps.push_back(Step::Pause(Duration::from_millis(1)));
            at = end;
        }
    }
    steps
}

struct XorShift(u64);

impl XorShift {
    fn new(seed: &str) -> Self {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in seed.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        XorShift(h | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first_pause(prompt: &str, prefill_per_1k_tokens: Duration) -> Duration {
        let timing = SimTiming {
            ttft: Duration::from_millis(100),
            prefill_per_1k_tokens,
            ..SimTiming::default()
        };
        let steps = build(&Generation {
            chat_id: "c",
            user_node_id: "u",
            response_id: "r",
            alt_response_id: "r2",
            prompt,
            read_tokens: 0,
            thinking: false,
            search: false,
            scenario: &Scenario::default(),
            tools: &[],
            timing: &timing,
            now_secs: 0,
        });
        steps
            .iter()
            .find_map(|s| match s {
                Step::Pause(d) => Some(*d),
                _ => None,
            })
            .expect("a pause before the answer")
    }

    /// The payloads of a script's events, in order.
    fn events(steps: &VecDeque<Step>) -> Vec<serde_json::Value> {
        let bytes: Vec<u8> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Write(b) => Some(b.to_vec()),
                _ => None,
            })
            .flatten()
            .collect();
        String::from_utf8(bytes)
            .unwrap()
            .split("\n\n")
            .filter(|e| !e.trim().is_empty())
            .map(|e| serde_json::from_str(e.trim().strip_prefix("data: ").unwrap()).unwrap())
            .collect()
    }

    #[test]
    fn search_cites_two_of_its_three_sources_and_the_chunks_cut_the_markers() {
        let prompt = "say \"hi\" in Oslo";
        let steps = build(&Generation {
            chat_id: "c",
            user_node_id: "u",
            response_id: "r",
            alt_response_id: "r2",
            prompt,
            read_tokens: 0,
            thinking: false,
            search: true,
            scenario: &Scenario::default(),
            tools: &[],
            // Four characters a frame: a five-character marker never fits one.
            timing: &SimTiming::default(),
            now_secs: 0,
        });
        let events = events(&steps);
        let sources = events
            .iter()
            .find_map(|e| e["choices"][0]["delta"]["extra"]["web_search_info"].as_array())
            .unwrap();
        assert_eq!(sources.len(), 3);
        for (n, (source, host)) in sources.iter().zip(wire::SEARCH_HOSTS).enumerate() {
            let n = n + 1;
            assert_eq!(
                source["url"],
                format!("https://{host}/search/{n}/say-hi-in-oslo")
            );
            assert_eq!(source["title"], format!("Result {n}: {prompt}"));
            assert_eq!(source["hostname"], host);
            assert!(source["snippet"].as_str().unwrap().contains(prompt));
        }
        // The capture's optional fields on the first source only.
        assert_eq!(sources[0]["hostlogo"], "https://example.com/favicon.ico");
        assert_eq!(sources[0]["date"], "");
        assert!(sources[1].get("hostlogo").is_none() && sources[2].get("date").is_none());

        let pieces: Vec<&str> = events
            .iter()
            .map(|e| &e["choices"][0]["delta"])
            .filter(|d| d["phase"] == "answer" && d["status"] == "typing")
            .map(|d| d["content"].as_str().unwrap())
            .collect();
        assert_eq!(
            pieces.concat(),
            format!("Simulated answer — 模拟回答[[1]]: you said \"{prompt}\".[[2]]")
        );
        for marker in ["[[1]]", "[[2]]"] {
            assert!(pieces.iter().all(|p| !p.contains(marker)), "{pieces:?}");
        }
        // `[[1]]` is cut after its first bracket: "拟回答[" | "[1]]".
        let at = pieces.iter().position(|p| p.ends_with('[')).unwrap();
        assert_eq!((pieces[at], pieces[at + 1]), ("拟回答[", "[1]]"));
    }

    #[test]
    fn the_first_token_waits_for_the_prompt_to_be_read() {
        let rate = Duration::from_millis(30);
        // 40,000 ASCII characters are 10,000 tokens (4 characters a token): 300 ms more.
        let long = "word ".repeat(8_000);
        assert_eq!(first_pause(&long, rate), Duration::from_millis(400));
        // A short continued turn pays for its few tokens only.
        assert_eq!(
            first_pause("the result is ok", rate),
            Duration::from_millis(100) + rate.mul_f64(4.0 / 1_000.0)
        );
        assert_eq!(
            first_pause(&long, Duration::ZERO),
            Duration::from_millis(100)
        );
    }
}
