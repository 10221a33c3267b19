//! A simulated model with a real model's habits in writing tool calls. The obedient
//! simulator writes exactly the block the proxy teaches; the models behind chat.qwen.ai do
//! not (tool-calling.md §3 and F1–F17, from the peers' captured outputs: 149 segments with
//! one clean opener; names from the agent's own prompt; calls in thinking; narration and
//! invented results after a call; fenced examples; native calls the platform intercepts).
//!
//! With `qwen-proxy sim --habits SEED` (or `--demo --habits SEED`, or `@@sim:habits[=SEED]`
//! on one request) every completion that makes calls writes them with one habit: the
//! simulator's k-th such completion gets habit `SEED + k` of [`Habit::ALL`], in cycles, each
//! cycle in the next form — reproducible for the same sequence of requests, and every habit
//! met in nine. `@@sim:habit=NAME[,FORM]` names the habit. The habit rewrites the scenario
//! (what the model answers, thinks, or calls natively) before the script is built. A model
//! that got the proxy's retry hint writes properly, as real models mostly do.

use super::scenario::{Scenario, SimCall};
use super::tools::{self, SimTool};

/// How a model may write its calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Habit {
    /// The agent's own name for a tool the proxy shows under an alias — its system prompt
    /// says "use the Read tool": `Read` for `fs_open_file`, `web_search` for
    /// `u_web_search`.
    OwnName,
    /// The name in another case or with other separators: `Read_File`, `READ_FILE`,
    /// `readFile`, `read-file`.
    CaseVariant,
    /// Each call narrated in a sentence and written without its opener: the bare payload
    /// (on the sentence's line or its own; in some forms with its arguments first), then the
    /// closer.
    NarratedBatch,
    /// The block written while thinking (as taught, or in the native `<tool_call>` tags);
    /// the answer says nothing, or only what the model is about to do.
    CallInThinking,
    /// Text after the call: a remark, or a result the model invents (in the proxy's result
    /// markers, or Qwen's native `<tool_response>`).
    TrailingText,
    /// An example call in a code fence before the real one.
    FencedExample,
    /// A garbled closer, or none.
    MangledCloser,
    /// A garbled opener: `[TOOL_CALL]`, `<tool_call>`, `<tool_call name="…">`, …
    MangledOpener,
    /// The model's native call, which the platform intercepts: function frames.
    NativeFrames,
}

impl Habit {
    pub const ALL: [Habit; 9] = [
        Habit::OwnName,
        Habit::CaseVariant,
        Habit::NarratedBatch,
        Habit::CallInThinking,
        Habit::TrailingText,
        Habit::FencedExample,
        Habit::MangledCloser,
        Habit::MangledOpener,
        Habit::NativeFrames,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Habit::OwnName => "own_name",
            Habit::CaseVariant => "case_variant",
            Habit::NarratedBatch => "narrated_batch",
            Habit::CallInThinking => "call_in_thinking",
            Habit::TrailingText => "trailing_text",
            Habit::FencedExample => "fenced_example",
            Habit::MangledCloser => "mangled_closer",
            Habit::MangledOpener => "mangled_opener",
            Habit::NativeFrames => "native_frames",
        }
    }

    pub fn parse(name: &str) -> Option<Habit> {
        Habit::ALL.into_iter().find(|h| h.name() == name)
    }

    /// The habit and its form for the `k`-th completion with calls under `seed`.
    pub fn pick(seed: u64, k: u64) -> (Habit, u64) {
        let n = Habit::ALL.len() as u64;
        let at = seed.wrapping_add(k);
        (Habit::ALL[(at % n) as usize], at / n)
    }
}

/// Rewrite the scenario's calls as a model with `habit` writes them (`variant` picks among
/// a habit's forms). Nothing changes without calls.
pub fn apply(scenario: &mut Scenario, habit: Habit, variant: u64, catalogue: &[SimTool]) {
    if scenario.calls.is_empty() {
        return;
    }
    let calls: Vec<(String, String)> = scenario
        .calls
        .iter()
        .map(|c| tools::resolve(c, catalogue))
        .collect();
    let lead = scenario.reply.take().unwrap_or_default();
    let blocks = |rename: &dyn Fn(&str) -> String| -> String {
        calls
            .iter()
            .map(|(name, args)| tools::call_block(&rename(name), args))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let answer = match habit {
        Habit::OwnName => format!("{lead}{}", blocks(&tools::own_name)),
        Habit::CaseVariant => format!("{lead}{}", blocks(&|n| case_variant(n, variant))),
        Habit::NarratedBatch => {
            let mut out = lead;
            for (i, (name, args)) in calls.iter().enumerate() {
                let say = if i == 0 {
                    format!("I'll start with {name}.")
                } else {
                    format!("Next, {name} again for the other one.")
                };
                let (between, call) = match variant % 3 {
                    0 => ("\n", payload(name, args)),
                    1 => (" ", payload(name, args)),
                    _ => ("\n", format!("{{\"arguments\": {args}, \"name\": \"{name}\"}}")),
                };
                out.push_str(&format!("{say}{between}{call}\n[END TOOL CALL]\n"));
            }
            out
        }
        Habit::CallInThinking => {
            let written = if (variant / 2) % 2 == 0 {
                blocks(&|n| n.to_owned())
            } else {
                calls
                    .iter()
                    .map(|(name, args)| format!("<tool_call>\n{}\n</tool_call>", payload(name, args)))
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            scenario.think_reply = Some(format!(
                "The user wants this done with the tools.\n\n{written}"
            ));
            if variant % 2 == 0 {
                String::new()
            } else {
                CALL_IN_THINKING_PROSE.to_owned()
            }
        }
        Habit::TrailingText => {
            let (name, _) = &calls[0];
            let after = match variant % 4 {
                0 => "\nI'll wait for the result before going on.".to_owned(),
                1 => format!(
                    "\n[TOOL RESULT #1: {name}]\n(the result, as the model imagines it)\n[END TOOL RESULT]\nThat settles it."
                ),
                2 => "\n\nThe result will tell us what to do next.".to_owned(),
                _ => format!(
                    "\n<tool_response>\n(the result of {name}, as the model imagines it)\n</tool_response>\nThat settles it."
                ),
            };
            format!("{lead}{}{after}", blocks(&|n| n.to_owned()))
        }
        Habit::FencedExample => format!(
            "{lead}A call looks like this:\n```\n[TOOL CALL]\n{{\"name\": \"example_tool\", \"arguments\": {{\"x\": 1}}}}\n[END TOOL CALL]\n```\nHere is mine:\n{}",
            blocks(&|n| n.to_owned())
        ),
        Habit::MangledCloser => {
            const CLOSERS: [&str; 7] = [
                "[END_TOOL_CALL]",
                "[/TOOL CALL]",
                "[END TOOL CALLS]",
                "</tool_call\u{ff1e}",
                "[END TOOL CALL",
                "[ END TOOL CALL ]",
                "",
            ];
            let closer = CLOSERS[(variant % CLOSERS.len() as u64) as usize];
            let mut out = lead;
            for (name, args) in &calls {
                out.push_str(&format!("[TOOL CALL]\n{}\n{closer}\n", payload(name, args)));
            }
            out
        }
        Habit::MangledOpener => {
            let mut out = lead;
            for (i, (name, args)) in calls.iter().enumerate() {
                let opener = match variant % 5 {
                    0 => "[TOOL_CALL]".to_owned(),
                    1 => "<tool_call>".to_owned(),
                    2 => format!("<tool_call name=\"{name}\">"),
                    3 => "[Tool Call]".to_owned(),
                    _ => format!("[TOOL CALL #{}]", i + 1),
                };
                let closer = if opener.starts_with('<') {
                    "</tool_call>"
                } else {
                    "[END TOOL CALL]"
                };
                out.push_str(&format!("{opener}\n{}\n{closer}\n", payload(name, args)));
            }
            out
        }
        Habit::NativeFrames => {
            scenario.native_calls = calls
                .iter()
                .map(|(name, args)| SimCall {
                    name: Some(name.clone()),
                    arguments: Some(args.clone()),
                })
                .collect();
            scenario.calls.clear();
            scenario.reply = (!lead.is_empty()).then_some(lead);
            return;
        }
    };
    scenario.calls.clear();
    scenario.reply = Some(answer);
}

/// What the model answers after writing its calls only while thinking (one form of
/// [`Habit::CallInThinking`]; the other answers nothing).
pub const CALL_IN_THINKING_PROSE: &str = "I'll do that with the tools now.";

/// `{"name": …, "arguments": …}` as the model writes it.
fn payload(name: &str, args: &str) -> String {
    format!("{{\"name\": \"{name}\", \"arguments\": {args}}}")
}

/// `read_file` as `Read_File`, `READ_FILE`, `readFile` or `read-file` — never the name
/// itself.
fn case_variant(name: &str, variant: u64) -> String {
    let words: Vec<&str> = name.split(['_', '-']).filter(|w| !w.is_empty()).collect();
    let title = |w: &str| {
        let mut c = w.chars();
        c.next()
            .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
            .unwrap_or_default()
    };
    let candidates = [
        words.iter().map(|w| title(w)).collect::<Vec<_>>().join("_"),
        name.to_ascii_uppercase(),
        words
            .iter()
            .enumerate()
            .map(|(i, w)| if i == 0 { (*w).to_owned() } else { title(w) })
            .collect(),
        words.join("-"),
    ];
    let n = candidates.len() as u64;
    (0..n)
        .map(|k| &candidates[((variant + k) % n) as usize])
        .find(|c| c.as_str() != name)
        .cloned()
        .unwrap_or_else(|| name.to_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn catalogue() -> Vec<SimTool> {
        ["read_file", "fs_open_file", "u_web_search"]
            .iter()
            .map(|n| SimTool {
                name: (*n).to_owned(),
                parameters: json!({"type": "object"}),
            })
            .collect()
    }

    fn scenario(names: &[&str]) -> Scenario {
        Scenario {
            calls: names
                .iter()
                .map(|n| SimCall {
                    name: Some((*n).to_owned()),
                    arguments: Some("{\"p\":1}".to_owned()),
                })
                .collect(),
            ..Scenario::default()
        }
    }

    fn written(habit: Habit, variant: u64, names: &[&str]) -> Scenario {
        let mut s = scenario(names);
        apply(&mut s, habit, variant, &catalogue());
        s
    }

    #[test]
    fn names_as_the_agent_spells_them() {
        let s = written(
            Habit::OwnName,
            0,
            &["fs_open_file", "u_web_search", "read_file"],
        );
        let reply = s.reply.unwrap();
        assert!(reply.contains("\"name\": \"Read\""), "{reply}");
        assert!(reply.contains("\"name\": \"web_search\""), "{reply}");
        assert!(reply.contains("\"name\": \"read_file\""), "{reply}");
        assert_eq!(tools::own_name("fs_put_file_2"), "Write");
        let variants: Vec<String> = (0..4).map(|v| case_variant("read_file", v)).collect();
        assert_eq!(
            variants,
            ["Read_File", "READ_FILE", "readFile", "read-file"]
        );
        assert_eq!(case_variant("read", 2), "Read");
        assert!((0..4).all(|v| case_variant("read", v) != "read"));
    }

    #[test]
    fn each_habit_rewrites_the_calls_and_nothing_without_them() {
        let s = written(Habit::CallInThinking, 0, &["read_file"]);
        assert_eq!(s.reply.as_deref(), Some(""));
        let s1 = written(Habit::CallInThinking, 1, &["read_file"]);
        assert_eq!(s1.reply.as_deref(), Some(CALL_IN_THINKING_PROSE));
        assert!(s
            .think_reply
            .unwrap()
            .contains("[TOOL CALL]\n{\"name\": \"read_file\""));
        let s = written(Habit::NativeFrames, 0, &["read_file"]);
        assert!(s.calls.is_empty() && s.native_calls.len() == 1);
        let s = written(Habit::NarratedBatch, 0, &["read_file", "read_file"]);
        let reply = s.reply.unwrap();
        assert!(!reply.contains("[TOOL CALL]"), "no openers: {reply}");
        assert_eq!(reply.matches("[END TOOL CALL]").count(), 2);
        let s = written(Habit::TrailingText, 1, &["read_file"]);
        assert!(s.reply.unwrap().contains("[TOOL RESULT #1: read_file]"));
        let s = written(Habit::FencedExample, 0, &["read_file"]);
        assert!(s
            .reply
            .unwrap()
            .contains("```\n[TOOL CALL]\n{\"name\": \"example_tool\""));
        for v in 0..7 {
            assert!(written(Habit::MangledCloser, v, &["read_file"])
                .calls
                .is_empty());
        }
        let s = written(Habit::MangledOpener, 2, &["read_file"]);
        assert!(s
            .reply
            .unwrap()
            .starts_with("<tool_call name=\"read_file\">"));
        let mut none = Scenario::default();
        apply(&mut none, Habit::CaseVariant, 0, &catalogue());
        assert_eq!(none, Scenario::default());
    }

    #[test]
    fn the_pick_cycles_through_every_habit_then_the_next_form() {
        assert_eq!(Habit::pick(7, 0), (Habit::MangledOpener, 0));
        assert_eq!(Habit::pick(7, 2), (Habit::OwnName, 1));
        let seen: std::collections::HashSet<&str> =
            (0..9).map(|k| Habit::pick(7, k).0.name()).collect();
        assert_eq!(seen.len(), Habit::ALL.len());
        for h in Habit::ALL {
            assert_eq!(Habit::parse(h.name()), Some(h));
        }
    }
}
