//! Long contexts as documents: when a fold is too large for one upstream request (the
//! anti-bot limit, `UPSTREAM_BODY_LIMIT`), the least harmful part of it moves into text
//! documents the message attaches (`qwen::files` uploads them), and the message says so.
//!
//! What moves, in this order, until the message fits: the oldest turns of the conversation
//! (into one `conversation-….txt`, in the fold's own format — markers defused as inline),
//! then the client's system prompt (into `instructions-….txt`). What stays inline: the
//! newest turns (at least the last one), the last user message (restated when it had to
//! move), the proxy's own instructions (the JSON format, the tools section) and the
//! reminder of the tools — what the model needs to answer and to call tools correctly. A
//! plan is pure: the caller says what fits (`fits`), uploads the documents and refuses what
//! cannot fit even so.

use crate::common::sha256_hex;

use super::fold::Folded;

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
        "[Earlier conversation]\nThe first {turns} messages of this conversation are in the \
         attached document \"{name}\", in this format; the messages below follow them."
    )
}

/// Plan the smallest move that fits: `fits(inline, documents)` says whether a message of
/// that text with that many attachments fits the upstream's limit. `None`: nothing fits
/// (the last turn, the proxy's instructions and the tools alone are too large).
pub(crate) fn plan(folded: &Folded, fits: impl Fn(&str, usize) -> bool) -> Option<Offloaded> {
    if folded.verbatim.is_some() {
        // A single user message: nothing older to move, and the message itself stays.
        return None;
    }
    let last_user = folded.turns.iter().rposition(|t| t.starts_with("[User]"));
    // Moving the client's instructions is the second resort.
    for move_instructions in [false, true] {
        if move_instructions && folded.instructions.iter().all(|i| i.trim().is_empty()) {
            break;
        }
        // The fewest turns moved that fit: try each count, oldest first (a fold has at
        // most a few hundred turns; each try is one string build).
        for moved in 0..folded.turns.len() {
            if moved == 0 && !move_instructions {
                continue; // that is the whole fold, which did not fit
            }
            let candidate = build(folded, moved, move_instructions, last_user);
            if fits(&candidate.inline, candidate.documents.len()) {
                return Some(candidate);
            }
        }
    }
    None
}

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
                folded.turns[at].trim_start_matches("[User]\n")
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
