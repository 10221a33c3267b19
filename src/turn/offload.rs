//! Long contexts as documents: when a fold is too large for one upstream request (the
//! anti-bot limit, `UPSTREAM_BODY_LIMIT`), the least harmful part of it moves into text
//! documents the message attaches (`qwen::files` uploads them), and the message says so.
//!
//! What moves, in this order, until the message fits: the oldest turns of the conversation
//! (into one `conversation-….txt`, in the fold's own format — markers defused as inline),
//! then the client's system prompt (into `instructions-….txt`). What stays inline: the
//! newest turns (at least the last one), the last user message (restated when it had to
//! move), the proxy's own instructions (the JSON format, the tools section) and the
//! reminder of the tools — what the model needs to answer and to call tools correctly.
//!
//! Last resort, when even that is too large — one message alone over the limit: a tool
//! result of a whole log, a pasted file — the largest messages left inline move whole into
//! documents of their own (`message-….txt`, at most [`MAX_MESSAGE_DOCUMENTS`]), each leaving
//! its label, its beginning and its end in place with a notice. A plan is pure: the caller
//! says what fits (`fits`), uploads the documents and refuses what cannot fit even so (the
//! proxy's instructions and the tools alone too large).

use crate::common::sha256_hex;

use super::fold::Folded;

/// The most messages that move into documents of their own (the front end attaches at most
/// five files to a message; the conversation and instructions documents may be two).
pub(crate) const MAX_MESSAGE_DOCUMENTS: usize = 3;

/// What of a message that moved stays inline: its first and last characters.
const EXCERPT_HEAD: usize = 3000;
const EXCERPT_TAIL: usize = 1500;

/// A text document to attach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Document {
    /// `conversation-<12 hex>.txt` or `instructions-<12 hex>.txt`.
    pub(crate) name: String,
    pub(crate) text: String,
    /// SHA-256 of the text, hex (uploads are cached by it per account).
    pub(crate) digest: String,
}

impl Document {
    fn new(kind: &str, text: String) -> Self {
        let digest = sha256_hex(text.as_bytes());
        Document {
            name: format!("{kind}-{}.txt", &digest[..12]),
            text,
            digest,
        }
    }
}

/// What is sent instead of the whole fold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Offloaded {
    /// The message text.
    pub(crate) inline: String,
    /// The documents it refers to, in the order they are attached.
    pub(crate) documents: Vec<Document>,
    /// How many of the fold's turns moved into the conversation document.
    pub(crate) moved_turns: usize,
}

/// The notice that stands for the client's system prompt.
fn instructions_notice(name: &str) -> String {
    format!(
        "Your instructions are in the attached document \"{name}\". Read it first and follow it \
         as this conversation's system prompt."
    )
}

/// The section that stands for the turns that moved.
fn conversation_notice(name: &str, turns: usize) -> String {
    format!(
        "{CONVERSATION_LABEL}\nThe first {turns} messages of this conversation are in the \
         attached document \"{name}\", in this format; the messages below follow them."
    )
}

/// Plan the smallest move that fits: `fits(inline, documents)` says whether a message of
/// that text with that many attachments fits the upstream's limit. `None`: nothing fits
/// (the last turn, the proxy's instructions and the tools alone are too large).
pub(crate) fn plan(folded: &Folded, fits: impl Fn(&str, usize) -> bool) -> Option<Offloaded> {
    if let Some(text) = &folded.verbatim {
        // A single user message: nothing older to move; only the message itself can.
        let labelled = Folded {
            turns: vec![format!("[User]\n{text}")],
            verbatim: None,
            ..folded.clone()
        };
        return last_resort(&labelled, &fits);
    }
    moves(folded, &fits, false).or_else(|| last_resort(folded, &fits))
}

/// The fewest older turns moved that fit, without and then with the instructions
/// (`whole`: the unchanged fold is a candidate too).
fn moves(folded: &Folded, fits: &impl Fn(&str, usize) -> bool, whole: bool) -> Option<Offloaded> {
    let last_user = folded.turns.iter().rposition(|t| t.starts_with("[User]"));
    // Moving the client's instructions is the second resort.
    for move_instructions in [false, true] {
        if move_instructions && folded.instructions.iter().all(|i| i.trim().is_empty()) {
            break;
        }
        // The fewest turns moved that fit, found by bisection. The more turns move, the
        // shorter the message — except where the last user message moves too and is
        // restated, which adds its text once: within each side of that point the counts
        // that fit are a suffix, so each side is bisected, the earlier side first.
        let first = usize::from(!(whole || move_instructions));
        let Some(most) = folded.turns.len().checked_sub(1).filter(|m| *m >= first) else {
            continue;
        };
        let restated_from = last_user.map_or(most + 1, |at| at + 1);
        let sides = [
            (first, most.min(restated_from.saturating_sub(1))),
            (first.max(restated_from), most),
        ];
        for (lo, hi) in sides.into_iter().filter(|(lo, hi)| lo <= hi) {
            if let Some(plan) = fewest(lo, hi, |moved| {
                Some(build(folded, moved, move_instructions, last_user))
                    .filter(|c| fits(&c.inline, c.documents.len()))
            }) {
                return Some(plan);
            }
        }
    }
    None
}

/// The smallest count in `lo..=hi` whose plan fits, given that the counts that fit are a
/// suffix of the range (`None`: not even `hi` fits).
fn fewest(lo: usize, hi: usize, attempt: impl Fn(usize) -> Option<Offloaded>) -> Option<Offloaded> {
    let mut best = attempt(hi)?;
    let (mut lo, mut hi) = (lo, hi);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match attempt(mid) {
            Some(c) => {
                best = c;
                hi = mid;
            }
            None => lo = mid + 1,
        }
    }
    Some(best)
}

/// The largest messages, one at a time, move into documents of their own (what is left of
/// each inline: [`excerpt`]); after each, the usual moves are planned again.
fn last_resort(folded: &Folded, fits: &impl Fn(&str, usize) -> bool) -> Option<Offloaded> {
    let mut shrunk = folded.clone();
    let mut own: Vec<Document> = Vec::new();
    let mut order: Vec<usize> = (0..shrunk.turns.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(shrunk.turns[i].len()));
    for i in order.into_iter().take(MAX_MESSAGE_DOCUMENTS) {
        if shrunk.turns[i].chars().count() <= EXCERPT_HEAD + EXCERPT_TAIL {
            break;
        }
        let doc = Document::new("message", std::mem::take(&mut shrunk.turns[i]));
        shrunk.turns[i] = excerpt(&doc);
        own.push(doc);
        let with_own = |inline: &str, documents: usize| fits(inline, documents + own.len());
        if let Some(mut plan) = moves(&shrunk, &with_own, true) {
            plan.documents.extend(own);
            return Some(plan);
        }
    }
    None
}

/// What stands for a message that moved into `doc`: its label line, a notice, its first and
/// last characters, and its closing line (`[END TOOL RESULT]`) when it has one.
fn excerpt(doc: &Document) -> String {
    let text = &doc.text;
    let (label, body) = text.split_once('\n').unwrap_or((text.as_str(), ""));
    let (body, close) = match body.rsplit_once('\n') {
        Some((rest, last)) if last.starts_with("[END ") => (rest, Some(last)),
        _ => (body, None),
    };
    let chars = body.chars().count();
    let head: String = body.chars().take(EXCERPT_HEAD).collect();
    let tail: String = body
        .chars()
        .skip(chars.saturating_sub(EXCERPT_TAIL))
        .collect();
    let mut out = format!(
        "{label}\n(This message is too long to send inline: all {chars} characters of it are in \
         the attached document \"{}\". Read it there. Its beginning and its end:)\n{head}\n[…]\n{tail}",
        doc.name
    );
    if let Some(close) = close {
        out.push('\n');
        out.push_str(close);
    }
    out
}

/// The label of the section that stands for the turns that moved.
const CONVERSATION_LABEL: &str = "[Earlier conversation]";

/// The message with the first `moved` turns (and, if asked, the instructions) in documents.
fn build(
    folded: &Folded,
    moved: usize,
    move_instructions: bool,
    last_user: Option<usize>,
) -> Offloaded {
    let mut documents = Vec::new();
    let mut system: Vec<String> = Vec::new();
    if move_instructions {
        let doc = Document::new("instructions", folded.instructions.join("\n\n"));
        system.push(instructions_notice(&doc.name));
        documents.push(doc);
    } else {
        system.extend(folded.instructions.iter().cloned());
    }
    system.extend(folded.added.iter().cloned());
    let mut turns: Vec<String> = Vec::new();
    if moved > 0 {
        let doc = Document::new("conversation", folded.turns[..moved].join("\n\n"));
        turns.push(conversation_notice(&doc.name, moved));
        documents.push(doc);
        // The request the conversation works on stays in view.
        if let Some(at) = last_user.filter(|at| *at < moved) {
            turns.push(format!(
                "[User]\n(The latest request of the user, also in the attached document:)\n{}",
                folded.turns[at]
                    .strip_prefix("[User]\n")
                    .unwrap_or(&folded.turns[at])
            ));
        }
    }
    turns.extend(folded.turns[moved..].iter().cloned());
    let inline = Folded {
        instructions: system,
        added: Vec::new(),
        turns,
        reminder: folded.reminder.clone(),
        verbatim: None,
    }
    .text();
    Offloaded {
        inline,
        documents,
        moved_turns: moved,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folded(turns: &[&str], instructions: &str) -> Folded {
        Folded {
            instructions: vec![instructions.to_owned()],
            added: vec!["# Tools\n(the tools section)".to_owned()],
            turns: turns.iter().map(|t| (*t).to_owned()).collect(),
            reminder: Some("(Tools: read_file.)".to_owned()),
            verbatim: None,
        }
    }

    #[test]
    fn the_oldest_turns_move_first_and_only_as_many_as_needed() {
        let answer = |n: usize| format!("[Assistant]\nanswer {n} {}", "x".repeat(1000));
        let (a1, a2) = (answer(1), answer(2));
        let f = folded(
            &[
                "[User]\nfirst task",
                &a1,
                "[User]\nsecond",
                &a2,
                "[User]\nthird",
            ],
            "be brief",
        );
        // Room for the whole fold less the first answer, and a notice.
        let room = f.text().len() - 1000 + 300;
        let plan = plan(&f, |inline, _| inline.len() <= room).unwrap();
        assert_eq!(
            plan.moved_turns, 2,
            "the first answer moves, with the turn before it"
        );
        assert_eq!(plan.documents.len(), 1);
        let doc = &plan.documents[0];
        assert_eq!(doc.text, format!("[User]\nfirst task\n\n{a1}"));
        assert!(doc.name.starts_with("conversation-") && doc.name.ends_with(".txt"));
        assert!(
            plan.inline.starts_with(
                "[System]\nbe brief\n\n# Tools\n(the tools section)\n\n[Earlier conversation]\nThe first 2 messages"
            ),
            "{}",
            plan.inline
        );
        assert!(plan.inline.contains(&doc.name));
        assert!(plan.inline.ends_with(&format!(
            "[User]\nsecond\n\n{a2}\n\n[User]\nthird\n\n(Tools: read_file.)"
        )));
    }

    #[test]
    fn the_last_user_message_stays_in_view_when_it_moves() {
        let f = folded(
            &[
                "[User]\nthe task",
                "[Assistant]\n[TOOL CALL #1]…",
                "[TOOL RESULT #1: read]\nhuge",
                "[Assistant]\n[TOOL CALL #2]…",
            ],
            "s",
        );
        // Only the last turn fits beside the notice.
        let plan = plan(&f, |inline, _| !inline.contains("huge")).unwrap();
        assert_eq!(plan.moved_turns, 3);
        assert!(plan.inline.contains("[User]\n(The latest request of the user, also in the attached document:)\nthe task\n\n[Assistant]\n[TOOL CALL #2]…"), "{}", plan.inline);
    }

    #[test]
    fn the_instructions_move_when_the_turns_are_not_enough() {
        let big = "x".repeat(10_000);
        let f = folded(&["[User]\nhi", "[Assistant]\nhello", "[User]\nagain"], &big);
        let plan = plan(&f, |inline, _| inline.len() < 2_000).unwrap();
        assert_eq!(plan.documents[0].text, big);
        assert!(plan.documents[0].name.starts_with("instructions-"));
        assert_eq!(
            plan.moved_turns, 0,
            "the turns fit once the instructions moved"
        );
        assert!(
            plan.inline.contains("# Tools\n(the tools section)"),
            "the tools stay inline"
        );
        // The same instructions are the same document (the digest names it).
        let again = super::plan(&f, |inline, _| inline.len() < 2_000).unwrap();
        assert_eq!(again.documents[0].digest, plan.documents[0].digest);
    }

    #[test]
    fn a_message_too_large_alone_moves_whole_leaving_its_ends_in_place() {
        let log: String = (0..4000).map(|i| format!("line {i}\n")).collect();
        let result = format!("[TOOL RESULT #1: read]\n{log}[END TOOL RESULT]");
        let f = folded(
            &[
                "[User]\nread the log",
                "[Assistant]\n[TOOL CALL #1]…",
                &result,
            ],
            "be brief",
        );
        // Room for everything but the log itself.
        let room = f.text().len() - log.len() + 6_000;
        let plan = plan(&f, |inline, _| inline.len() <= room).unwrap();
        // Nothing older had to move: only the result, into a document of its own.
        assert_eq!(plan.moved_turns, 0);
        assert_eq!(plan.documents.len(), 1);
        let doc = &plan.documents[0];
        assert!(doc.name.starts_with("message-"), "{}", doc.name);
        assert_eq!(doc.text, result);
        assert!(
            plan.inline.starts_with("[System]\nbe brief"),
            "{}",
            plan.inline
        );
        assert!(plan.inline.contains("[User]\nread the log"));
        // Its label, a notice naming the document, its first and last lines, its close.
        let at = plan
            .inline
            .find("[TOOL RESULT #1: read]\n(This message is too long")
            .unwrap();
        let excerpt = &plan.inline[at..];
        assert!(excerpt.contains(&doc.name));
        assert!(excerpt.contains("line 0\nline 1\n"));
        assert!(excerpt.contains("line 3999\n[END TOOL RESULT]"));
        assert!(
            !excerpt.contains("line 2000\n"),
            "the middle is in the document only"
        );
        assert!(plan.inline.ends_with("(Tools: read_file.)"));
    }

    #[test]
    fn a_single_huge_message_is_sent_as_a_document_with_its_ends() {
        let paste = "word ".repeat(40_000);
        let single = Folded {
            instructions: Vec::new(),
            added: Vec::new(),
            turns: Vec::new(),
            reminder: None,
            verbatim: Some(format!("Summarise this:\n{paste}")),
        };
        let plan = plan(&single, |inline, docs| inline.len() < 10_000 && docs == 1).unwrap();
        assert_eq!(
            plan.documents[0].text,
            format!("[User]\nSummarise this:\n{paste}")
        );
        assert!(
            plan.inline.starts_with("[User]\n(This message is too long"),
            "{}",
            &plan.inline[..200]
        );
        assert!(plan.inline.contains("Summarise this:"));
    }

    #[test]
    fn moving_the_last_request_too_is_planned_although_it_is_restated() {
        // Moving the last user message adds its restatement: moving 3 is longer than moving
        // 2 here, and only moving 2 or more of the long turns fits.
        let (x, y) = ("x".repeat(2000), "y".repeat(2000));
        let (u1, a1) = (format!("[User]\n{x}"), format!("[Assistant]\n{y}"));
        let f = folded(&[&u1, &a1, "[User]\nnow answer", "[Assistant]\nSure."], "s");
        let two = build(&f, 2, false, Some(2)).inline.len();
        let three = build(&f, 3, false, Some(2)).inline.len();
        assert!(three > two, "the restatement makes moving 3 longer");
        let plan = plan(&f, |inline, _| inline.len() <= two).unwrap();
        assert_eq!(plan.moved_turns, 2);
    }

    #[test]
    fn what_cannot_fit_even_so_is_none() {
        let f = folded(&["[User]\nhi", "[User]\nagain"], "s");
        assert_eq!(plan(&f, |_, _| false), None);
        let single = Folded {
            verbatim: Some("one message".to_owned()),
            ..f
        };
        assert_eq!(plan(&single, |_, _| true), None);
    }
}
