//! The scanner against the cases of tool-calling.md §6 (numbers in the test names). Every
//! case runs the same upstream text whole, one character per piece, and in seeded random
//! splits, and must give the identical result each way (chunk invariance, §6.5).

use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::tools::{Choice, ToolSpec};
use crate::translate::testing::Recorder;

fn set_with(choice: Choice, parallel: bool) -> ToolSet {
    let tool = |name: &str, params: serde_json::Value| ToolSpec {
        name: name.to_owned(),
        description: None,
        parameters: params,
    };
    let mut tools = vec![
        tool(
            "get_weather",
            json!({"type":"object","properties":{"city":{"type":"string"},"days":{"type":"integer"}},"required":["city"]}),
        ),
        tool(
            "write_file",
            json!({"type":"object","properties":{"path":{"type":"string"},"content":{"type":"string"}}}),
        ),
        tool(
            "Write",
            json!({"type":"object","properties":{"path":{"type":"string"}}}),
        ),
    ];
    if let Choice::Named(n) = &choice {
        tools.retain(|t| t.name == *n);
    }
    ToolSet::new(tools, choice, parallel, &["Write".to_owned()])
}

fn auto() -> ToolSet {
    set_with(Choice::Auto, true)
}

#[derive(Debug, PartialEq)]
struct Out {
    content: String,
    reasoning: String,
    calls: Vec<(String, String)>,
    finish: Option<FinishReason>,
    retry: Option<Hint>,
    stats: ScanStats,
}

fn run_pieces(set: &ToolSet, retry: bool, pieces: &[&str], reasoning: &[&str]) -> Out {
    run_pieces_in(false, set, retry, pieces, reasoning)
}

fn run_pieces_in(
    streaming: bool,
    set: &ToolSet,
    retry: bool,
    pieces: &[&str],
    reasoning: &[&str],
) -> Out {
    let mut scan = ToolScan::new(ScanConfig {
        set: Arc::new(set.clone()),
        retry_allowed: retry,
        streaming,
    });
    let mut out = Recorder::default();
    for r in reasoning {
        scan.reasoning(r, &mut out);
    }
    for p in pieces {
        scan.content(p, &mut out);
    }
    scan.flush(&mut out);
    Out {
        content: out.content,
        reasoning: out.reasoning,
        calls: out.calls,
        finish: scan.finish_reason(),
        retry: scan.retry(),
        stats: scan.stats(),
    }
}

/// The text split at the given character counts.
fn split_at_chars(text: &str, mut sizes: impl FnMut() -> usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let n = sizes().max(1);
        let cut = rest.char_indices().nth(n).map_or(rest.len(), |(i, _)| i);
        pieces.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    pieces
}

/// Run `upstream` whole, a character at a time and in random splits; all must agree.
fn scan_with(set: &ToolSet, retry: bool, upstream: &str) -> Out {
    let whole = run_pieces(set, retry, &[upstream], &[]);
    let by_char = run_pieces(set, retry, &split_at_chars(upstream, || 1), &[]);
    assert_eq!(by_char, whole, "one character per piece");
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..20 {
        let pieces = split_at_chars(upstream, || {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            ((seed >> 33) % 12) as usize
        });
        assert_eq!(
            run_pieces(set, retry, &pieces, &[]),
            whole,
            "random split {round}: {pieces:?}"
        );
    }
    whole
}

/// The outcome of `thinking` and `answer` each given whole, checked to be the same under
/// every split of either (the other whole): into two pieces at each character boundary, and
/// into single characters (chunk invariance, §6.5). Exhaustive where `scan_with` samples.
fn every_split(set: &ToolSet, retry: bool, streaming: bool, thinking: &str, answer: &str) -> Out {
    fn whole(text: &str) -> Vec<&str> {
        [text].into_iter().filter(|t| !t.is_empty()).collect()
    }
    let run =
        |thinking: &[&str], answer: &[&str]| run_pieces_in(streaming, set, retry, answer, thinking);
    let expected = run(&whole(thinking), &whole(answer));
    for (what, text) in [("thinking", thinking), ("answer", answer)] {
        let mut splits: Vec<Vec<&str>> = text
            .char_indices()
            .skip(1)
            .map(|(i, _)| vec![&text[..i], &text[i..]])
            .collect();
        splits.push(split_at_chars(text, || 1));
        for pieces in splits {
            let got = if what == "thinking" {
                run(&pieces, &whole(answer))
            } else {
                run(&whole(thinking), &pieces)
            };
            assert_eq!(got, expected, "the {what} split as {pieces:?}");
        }
    }
    expected
}

fn scan(upstream: &str) -> Out {
    scan_with(&auto(), false, upstream)
}

fn call(name: &str, args: &str) -> (String, String) {
    (name.to_owned(), args.to_owned())
}

const PARIS: &str =
    "[TOOL CALL]\n{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Paris\"}}\n[END TOOL CALL]";

#[test]
fn c04_a_single_call() {
    let out = scan(PARIS);
    assert_eq!(out.calls, [call("get_weather", r#"{"city":"Paris"}"#)]);
    assert_eq!(out.content, "");
    assert_eq!(out.finish, Some(FinishReason::ToolCalls));
}

#[test]
fn c05_splits_inside_markers_strings_and_multibyte_characters() {
    let out = scan("[TOOL CALL]\n{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Besançon é\"}}\n[END TOOL CALL]");
    assert_eq!(out.calls, [call("get_weather", r#"{"city":"Besançon é"}"#)]);
}

#[test]
fn c06_prose_before_a_call_streams_first() {
    let out = scan(&format!("Let me check.\n{PARIS}"));
    assert_eq!(out.content, "Let me check.\n");
    assert_eq!(out.calls.len(), 1);
    assert_eq!(out.finish, Some(FinishReason::ToolCalls));
}

#[test]
fn c07_two_calls_back_to_back() {
    let out = scan(&format!(
        "{PARIS}\n[TOOL CALL]\n{{\"name\":\"write_file\",\"arguments\":{{\"path\":\"a\",\"content\":\"b\"}}}}\n[END TOOL CALL]"
    ));
    assert_eq!(
        out.calls,
        [
            call("get_weather", r#"{"city":"Paris"}"#),
            call("write_file", r#"{"path":"a","content":"b"}"#)
        ]
    );
}

#[test]
fn c08_parallel_false_keeps_the_first_call_only() {
    let set = set_with(Choice::Auto, false);
    let out = scan_with(&set, false, &format!("{PARIS}\n{PARIS}"));
    assert_eq!(out.calls.len(), 1);
    assert_eq!(out.finish, Some(FinishReason::ToolCalls));
}

#[test]
fn c09_c10_nothing_after_the_calls_reaches_the_client() {
    for tail in [
        "\nThe weather is sunny.",
        "\n[TOOL RESULT #1: get_weather]\n22°C\n[END TOOL RESULT]",
    ] {
        let out = scan(&format!("{PARIS}{tail}"));
        assert_eq!(out.calls.len(), 1);
        assert_eq!(out.content, "", "{tail}");
        assert_eq!(out.finish, Some(FinishReason::ToolCalls));
    }
}

#[test]
fn c11_the_native_tag_family_and_names_from_the_payload_only() {
    let payload = r#"{"name":"get_weather","arguments":{"city":"Paris"}}"#;
    for text in [
        format!("<tool_call>\n{payload}\n</tool_call>"),
        format!("<tool_call name=\"get_weather\">\n{payload}\n</tool_call>"),
        format!("<tool_call\n>{payload}</tool_call＞"),
        format!("<tool_call bash>{payload}"),
    ] {
        let out = scan(&text);
        assert_eq!(
            out.calls,
            [call("get_weather", r#"{"city":"Paris"}"#)],
            "{text}"
        );
        assert_eq!(out.content, "", "{text}");
    }
}

#[test]
fn c12_a_missing_closer() {
    let out = scan("[TOOL CALL]\n{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Oslo\"}}");
    assert_eq!(out.calls, [call("get_weather", r#"{"city":"Oslo"}"#)]);
}

#[test]
fn c13_a_missing_opener_at_the_start_of_the_answer() {
    let out = scan("{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Rome\"}}\n[END TOOL CALL]");
    assert_eq!(out.calls, [call("get_weather", r#"{"city":"Rome"}"#)]);
    assert_eq!(out.content, "", "the closer is not content");
}

#[test]
fn c14_bare_json_in_the_middle_of_a_line_is_prose() {
    let text = r#"Example: {"name":"get_weather","arguments":{}}"#;
    let out = scan(text);
    assert_eq!(out.content, text);
    assert!(out.calls.is_empty());
    assert_eq!(out.finish, None);
}

#[test]
fn c15_markers_in_code_are_documentation() {
    for text in [
        format!("```\n{PARIS}\n```\nThat is the format."),
        "Write `[TOOL CALL]` then the JSON.".to_owned(),
        format!("  ```json\n{PARIS}\n  ```"),
    ] {
        let out = scan(&text);
        assert!(out.calls.is_empty(), "{text}");
        assert_eq!(out.content, text);
    }
}

#[test]
fn c16_a_markdown_link_is_prose() {
    let text = "See [tool calls](https://x.y) for details.";
    assert_eq!(scan(text).content, text);
}

#[test]
fn c17_a_partial_opener_at_the_end() {
    let out = scan("Use [TOO");
    assert_eq!(out.content, "Use [TOO");
    assert_eq!(out.finish, None);
}

#[test]
fn c18_debris_before_the_closer() {
    let out = scan("[TOOL CALL]\n{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Paris\"}}}}\n[END TOOL CALL]");
    assert_eq!(out.calls.len(), 1);
    assert_eq!(out.content, "");
}

#[test]
fn c19_markers_and_braces_inside_strings() {
    let out = scan("[TOOL CALL]\n{\"name\":\"write_file\",\"arguments\":{\"path\":\"a\",\"content\":\"a } [END TOOL CALL] { <tool_call>\"}}\n[END TOOL CALL]");
    assert_eq!(
        out.calls,
        [call(
            "write_file",
            r#"{"path":"a","content":"a } [END TOOL CALL] { <tool_call>"}"#
        )]
    );
}

#[test]
fn c20_raw_control_characters_in_strings_are_repaired() {
    let out = scan("[TOOL CALL]\n{\"name\":\"write_file\",\"arguments\":{\"path\":\"a\",\"content\":\"line1\nline2\tend\"}}\n[END TOOL CALL]");
    assert_eq!(
        out.calls,
        [call(
            "write_file",
            r#"{"path":"a","content":"line1\nline2\tend"}"#
        )]
    );
}

#[test]
fn c21_string_arguments_and_key_aliases() {
    let out = scan("[TOOL CALL]\n{\"name\":\"get_weather\",\"arguments\":\"{\\\"city\\\":\\\"Paris\\\"}\"}\n[END TOOL CALL]");
    assert_eq!(out.calls, [call("get_weather", r#"{"city":"Paris"}"#)]);
    let out = scan("[TOOL CALL]\n{\"tool\":\"get_weather\",\"parameters\":{\"city\":\"Paris\"}}\n[END TOOL CALL]");
    assert_eq!(out.calls, [call("get_weather", r#"{"city":"Paris"}"#)]);
}

#[test]
fn c22_schema_coercion() {
    let out = scan("[TOOL CALL]\n{\"name\":\"get_weather\",\"arguments\":{\"city\":\"3\",\"days\":\"3\"}}\n[END TOOL CALL]");
    assert_eq!(out.calls, [call("get_weather", r#"{"city":"3","days":3}"#)]);
}

#[test]
fn c23_the_qwen3_coder_xml_form() {
    let out = scan("[TOOL CALL]\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n2\n</parameter>\n</function>\n[END TOOL CALL]");
    assert_eq!(
        out.calls,
        [call("get_weather", r#"{"city":"Paris","days":2}"#)]
    );
    assert_eq!(out.content, "");
    // Code with `<` and `&` in a value, and a missing `</parameter>`.
    let out = scan("<tool_call>\n<function=write_file>\n<parameter=path>\na.rs\n<parameter=content>\nif a < b && c {}\n</parameter>\n</function>\n</tool_call>");
    assert_eq!(
        out.calls,
        [call(
            "write_file",
            r#"{"path":"a.rs","content":"if a < b && c {}"}"#
        )]
    );
}

#[test]
fn c24_an_unknown_name_is_never_a_call() {
    let block = "[TOOL CALL]\n{\"name\":\"delete_everything\",\"arguments\":{}}\n[END TOOL CALL]";
    // A retry possible (the client saw nothing yet): asked again, nothing shown — also after
    // prose, which a non-streamed answer has not shown either.
    for answer in [block.to_owned(), format!("Sure.\n{block}")] {
        let out = scan_with(&auto(), true, &answer);
        assert_eq!(out.retry, Some(Hint::BadCall), "{answer}");
        // (The prose went to the collected answer, which the retry replaces.)
        assert!(!out.content.contains("TOOL"), "{}", out.content);
        assert!(out.calls.is_empty());
    }
    // No retry left: never the raw block as the answer, but what happened.
    let out = scan(&format!("Sure.\n{block}\nDone."));
    assert!(out.calls.is_empty());
    assert_eq!(
        out.content,
        "Sure.\n\n\n(The model called a tool named `delete_everything`, which this request does not offer (its tools: get_weather, write_file, Write); no tool was run.)"
    );
    assert!(!out.content.contains("[TOOL CALL]"));
    assert_eq!(out.finish, Some(FinishReason::Complete));
    // Streamed prose already shown: no retry, the explanation follows it.
    let out = run_pieces_in(true, &auto(), true, &["Sure.\n", block], &[]);
    assert_eq!(out.retry, None);
    assert!(
        out.content.starts_with("Sure.\n\n\n(The model called"),
        "{}",
        out.content
    );
    // A bare JSON object that names no tool and has no arguments is the model's JSON.
    let out = scan("{\"name\": \"Ada\", \"age\": 36}");
    assert_eq!(out.content, "{\"name\": \"Ada\", \"age\": 36}");
}

#[test]
fn c25_aliases_are_reversed() {
    let out = scan(
        "[TOOL CALL]\n{\"name\":\"fs_put_file\",\"arguments\":{\"path\":\"x\"}}\n[END TOOL CALL]",
    );
    assert_eq!(out.calls, [call("Write", r#"{"path":"x"}"#)]);
}

#[test]
fn c26_an_unbalanced_payload_is_given_up_on_at_the_span_cap() {
    let text = format!(
        "[TOOL CALL]\n{{\"name\":\"write_file\",\"arguments\":{{\"content\":\"{}",
        "x".repeat(SPAN_MAX + 200_000)
    );
    let out = run_pieces(&auto(), false, &split_at_chars(&text, || 4096), &[]);
    assert!(out.calls.is_empty());
    assert_eq!(out.content, text, "released as text, nothing lost");
}

#[test]
fn c27_a_truncated_payload_is_not_a_call() {
    let text =
        "[TOOL CALL]\n{\"name\":\"write_file\",\"arguments\":{\"path\":\"a\",\"content\":\"abc";
    let out = scan(text);
    assert!(out.calls.is_empty());
    // Nothing of the answer was a call: a bad call, explained (no retry left), never the
    // raw block.
    assert_eq!(
        out.content,
        "(The model wrote a tool call that could not be read (the answer ended inside it); no tool was run.)"
    );
    assert_eq!(scan_with(&auto(), true, text).retry, Some(Hint::BadCall));
    // After a call, an unfinished second one is dropped.
    let out = scan(&format!("{PARIS}\n{text}"));
    assert_eq!(out.calls.len(), 1);
    assert_eq!(out.content, "");
    // A bare `{` that never closes is the model's text — unless it began as a call does.
    let out = scan("{\"title\": \"unfinished");
    assert_eq!(out.content, "{\"title\": \"unfinished");
    let out = scan("{\"name\": \"write_file\", \"arguments\": {\"path\": \"a");
    assert!(out
        .content
        .starts_with("(The model wrote a tool call that could not be read"));
}

#[test]
fn c28_intercepted_native_calls_are_harvested() {
    let set = auto();
    let mut scan = ToolScan::new(ScanConfig {
        set: Arc::new(set),
        retry_allowed: false,
        streaming: true,
    });
    let mut out = Recorder::default();
    for args in ["{\"ci", "{\"city\":\"Paris\"}", "{\"city\":\"Paris\"}"] {
        scan.platform_call(
            PlatformFrame::Call {
                name: "get_weather",
                arguments: args,
            },
            &mut out,
        );
    }
    assert!(out.calls.is_empty(), "not before the platform closes it");
    scan.platform_call(
        PlatformFrame::Result {
            name: "get_weather",
        },
        &mut out,
    );
    assert_eq!(out.calls, [call("get_weather", r#"{"city":"Paris"}"#)]);
    // More intercepted calls of a batch may follow the result; what the model says next
    // (about the platform's "does not exists") is not the client's, and ends the answer.
    assert_eq!(scan.finish_reason(), None);
    scan.platform_call(
        PlatformFrame::Call {
            name: "get_weather",
            arguments: "{\"city\":\"Oslo\"}",
        },
        &mut out,
    );
    scan.platform_call(
        PlatformFrame::Result {
            name: "get_weather",
        },
        &mut out,
    );
    assert_eq!(out.calls.len(), 2);
    scan.content("Sorry, the tool does not exist.", &mut out);
    assert_eq!(scan.finish_reason(), Some(FinishReason::ToolCalls));
    scan.flush(&mut out);
    assert_eq!(out.content, "");
}

#[test]
fn c40_required_holds_prose_and_asks_again_once() {
    let set = set_with(Choice::Required, true);
    let out = scan_with(&set, true, "I think it is sunny.");
    assert_eq!(out.retry, Some(Hint::NoCall));
    assert_eq!(out.content, "", "nothing shown before the retry");
    // The retry (no retry left) answers prose again: shown, once.
    let out = scan_with(&set, false, "I think it is sunny.");
    assert_eq!(out.retry, None);
    assert_eq!(out.content, "I think it is sunny.");
    assert_eq!(out.finish, None);
    // Prose then a call: the prose is released before the call.
    let out = scan_with(&set, true, &format!("Checking.\n{PARIS}"));
    assert_eq!(out.content, "Checking.\n");
    assert_eq!(out.calls.len(), 1);
    assert_eq!(out.retry, None);
}

#[test]
fn c41_a_named_choice_accepts_only_that_tool() {
    let set = set_with(Choice::Named("write_file".into()), true);
    let out = scan_with(&set, true, PARIS);
    assert_eq!(out.retry, Some(Hint::BadCall));
    assert!(out.calls.is_empty());
    let out = scan_with(&set, false, PARIS);
    assert!(out.calls.is_empty());
    assert!(
        out.content.contains("get_weather"),
        "shown as text: {}",
        out.content
    );
}

#[test]
fn a_call_written_only_while_thinking_asks_again() {
    let thinking = [
        "I should call [TOOL CALL]",
        "\n{\"name\":\"get_weather\"}\n[END TOOL CALL]",
    ];
    let answer = ["I cannot check the weather."];
    // Not streaming, nothing reached the client yet: ask again.
    let out = run_pieces(&auto(), true, &answer, &thinking);
    assert_eq!(out.retry, Some(Hint::CallInThinking));
    // Streaming, the thinking and the prose went out as they came (auto): the answer stands,
    // and the client is told the call was not made.
    let out = run_pieces_in(true, &auto(), true, &answer, &thinking);
    assert_eq!(out.retry, None);
    assert_eq!(
        out.content,
        "I cannot check the weather.\n\n(The model wrote its tool call while thinking, not in its answer; no tool was run.)"
    );
    let required = set_with(Choice::Required, true);
    let out = run_pieces(
        &required,
        true,
        &["I cannot check the weather."],
        &[
            "I should call [TOOL CALL]",
            "\n{\"name\":\"get_weather\"}\n[END TOOL CALL]",
        ],
    );
    assert_eq!(out.retry, Some(Hint::CallInThinking));
    assert!(
        out.reasoning.contains("[TOOL CALL]"),
        "reasoning passes through"
    );
}

#[test]
fn plain_prose_passes_at_once_with_bounded_hold_back() {
    // Every piece of prose without a `[`, `<` or line-start `{` is released as it arrives.
    let mut scan = ToolScan::new(ScanConfig {
        set: Arc::new(auto()),
        retry_allowed: false,
        streaming: true,
    });
    let mut out = Recorder::default();
    for piece in ["Hello", " world", ", how", " are you?"] {
        scan.content(piece, &mut out);
        assert!(
            out.content.ends_with(piece),
            "released at once: {:?}",
            out.content
        );
    }
    scan.content(" See [T", &mut out);
    assert!(
        out.content.ends_with(" See "),
        "only the possible opener is held"
    );
    scan.content("he docs].", &mut out);
    assert!(out.content.ends_with("See [The docs]."));
}

// Review findings, each a case the §6 list does not spell out.

#[test]
fn after_a_call_an_invalid_second_block_and_what_follows_are_not_shown() {
    let bad = "[TOOL CALL]\n{\"name\":\"nope\",\"arguments\":{}}\n[END TOOL CALL]";
    let out = scan(&format!("{PARIS}\n{bad}\nThe weather is 22°C."));
    assert_eq!(out.calls, [call("get_weather", r#"{"city":"Paris"}"#)]);
    assert_eq!(out.content, "");
    assert_eq!(out.finish, Some(FinishReason::ToolCalls));
    // An opener without a payload after a call: the same.
    let out = scan(&format!("{PARIS}\n[TOOL CALL] and then nothing"));
    assert_eq!(out.calls.len(), 1);
    assert_eq!(out.content, "");
}

#[test]
fn an_opener_without_a_payload_at_the_end_is_shown_whole() {
    let text = format!("Hi [TOOL CALL] {}", "a".repeat(200));
    let out = scan(&text);
    assert!(out.calls.is_empty());
    assert_eq!(out.content, text);
}

#[test]
fn xml_parameters_on_one_line() {
    let out = scan("[TOOL CALL]\n<function=get_weather>\n<parameter=city>Paris</parameter>\n<parameter=days>3\n</parameter>\n</function>\n[END TOOL CALL]");
    assert_eq!(
        out.calls,
        [call("get_weather", r#"{"city":"Paris","days":3}"#)]
    );
}

fn native(scan: &mut ToolScan, out: &mut Recorder, name: &str, snapshots: &[&str]) {
    for args in snapshots {
        scan.platform_call(
            PlatformFrame::Call {
                name,
                arguments: args,
            },
            out,
        );
    }
    scan.platform_call(PlatformFrame::Result { name }, out);
}

fn scanner(set: ToolSet, retry: bool) -> ToolScan {
    ToolScan::new(ScanConfig {
        set: Arc::new(set),
        retry_allowed: retry,
        streaming: false,
    })
}

#[test]
fn an_intercepted_call_that_cannot_be_recovered_hides_the_aftermath_and_asks_again() {
    // The model natively called a tool the request does not offer: not a call we can emit.
    let mut s = scanner(auto(), true);
    let mut out = Recorder::default();
    native(&mut s, &mut out, "Read", &["{\"path\":\"a\"}"]);
    s.content("Sorry, that tool does not exist.", &mut out);
    s.flush(&mut out);
    assert!(out.calls.is_empty());
    assert_eq!(out.content, "");
    assert_eq!(s.retry(), Some(Hint::Intercepted));
    // Without a retry left, the aftermath is still not the client's answer: what happened is.
    let mut s = scanner(auto(), false);
    let mut out = Recorder::default();
    native(&mut s, &mut out, "Read", &["{\"path\":\"a\"}"]);
    s.content("Sorry, that tool does not exist.", &mut out);
    s.flush(&mut out);
    assert_eq!(
        out.content,
        "(The model called a tool named `Read`, which this request does not offer (its tools: get_weather, write_file, Write); no tool was run.)"
    );
    assert_eq!(s.finish_reason(), Some(FinishReason::Complete));
    assert_eq!(s.stats().abandoned, 1);
}

#[test]
fn native_calls_respect_parallel_off_rewrites_and_empty_arguments() {
    let mut s = scanner(set_with(Choice::Auto, false), false);
    let mut out = Recorder::default();
    // A snapshot rewritten before it was complete JSON is the same call.
    native(
        &mut s,
        &mut out,
        "get_weather",
        &["{\"ci", "{\"city\":\"Pa", "{\"city\": \"Paris\"}"],
    );
    native(&mut s, &mut out, "write_file", &[""]);
    assert_eq!(out.calls, [call("get_weather", r#"{"city":"Paris"}"#)]);
    // With parallel calls on, the second (argument-less) call is made with `{}`.
    let mut s = scanner(auto(), false);
    let mut out = Recorder::default();
    native(&mut s, &mut out, "write_file", &[""]);
    assert_eq!(out.calls, [call("write_file", "{}")]);
}

#[test]
fn only_a_whole_call_block_in_the_thinking_asks_again() {
    let answer = ["I can answer without tools."];
    let deciding = [
        "Should I use [TOOL CALL] with \"name\"",
        "? No, I know this.",
    ];
    assert_eq!(run_pieces(&auto(), true, &answer, &deciding).retry, None);
    let wrote = [
        "[TOOL",
        " CALL]\n{\"na",
        "me\": \"get_weather\"}\n[END TOOL",
        " CALL]",
    ];
    assert_eq!(
        run_pieces(&auto(), true, &answer, &wrote).retry,
        Some(Hint::CallInThinking)
    );
}

// Real models' habits (issue 18, the simulator's `habits.rs` writes them too).

#[test]
fn a_narrated_batch_without_openers_gives_every_call() {
    let text = "I'll start with Paris.\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n[END TOOL CALL]\nNext, Oslo.\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n[END TOOL CALL]\n";
    let out = scan(text);
    assert_eq!(
        out.calls,
        [
            call("get_weather", r#"{"city":"Paris"}"#),
            call("get_weather", r#"{"city":"Oslo"}"#)
        ]
    );
    assert_eq!(out.content, "I'll start with Paris.\n");
    assert_eq!(out.finish, Some(FinishReason::ToolCalls));
    // With parallel calls off, the first only.
    let out = scan_with(&set_with(Choice::Auto, false), false, text);
    assert_eq!(out.calls.len(), 1);
}

#[test]
fn garbled_closers_between_calls_are_skipped() {
    for closer in [
        "[END TOOL CALL",
        "[ END TOOL CALL ]",
        "[END_TOOL_CALL]",
        "</tool_call\u{ff1e}",
        "",
    ] {
        let block = |city: &str| {
            format!("[TOOL CALL]\n{{\"name\":\"get_weather\",\"arguments\":{{\"city\":\"{city}\"}}}}\n{closer}\n")
        };
        let out = scan(&format!("{}{}", block("Paris"), block("Oslo")));
        assert_eq!(out.calls.len(), 2, "closer {closer:?}: {out:?}");
        assert_eq!(out.content, "");
    }
}

#[test]
fn after_a_call_only_a_short_narration_is_skipped_and_an_invented_result_ends_it() {
    // An invented result: nothing after it counts, not even a call.
    let out = scan(&format!(
        "{PARIS}\n[TOOL RESULT #1: get_weather]\nsunny\n[END TOOL RESULT]\n{PARIS}"
    ));
    assert_eq!(out.calls.len(), 1);
    assert_eq!(out.content, "");
    // More than a short narration is not a batch.
    let long = "And now I will explain at length. ".repeat(20);
    let out = scan(&format!("{PARIS}\n{long}\n{PARIS}"));
    assert_eq!(out.calls.len(), 1);
    let three_lines = "one\ntwo\nthree\n";
    let out = scan(&format!("{PARIS}\n{three_lines}{PARIS}"));
    assert_eq!(out.calls.len(), 1);
    assert_eq!(out.finish, Some(FinishReason::ToolCalls));
}

#[test]
fn a_call_written_only_while_thinking_is_taken_when_the_answer_is_empty() {
    let thinking = [
        "The user wants the weather.\n\n[TOOL CALL]\n{\"name\":\"get_wea",
        "ther\",\"arguments\":{\"city\":\"Paris\"}}\n[END TOOL CALL]",
    ];
    for streaming in [false, true] {
        let out = run_pieces_in(streaming, &auto(), true, &["", " \n"], &thinking);
        assert_eq!(
            out.calls,
            [call("get_weather", r#"{"city":"Paris"}"#)],
            "streaming {streaming}"
        );
        assert_eq!(out.retry, None);
        assert_eq!(out.finish, Some(FinishReason::ToolCalls));
    }
    // A word of answer: the thinking may have decided against it; not taken.
    let out = run_pieces_in(
        true,
        &auto(),
        true,
        &["No tool needed: it is sunny."],
        &thinking,
    );
    assert!(out.calls.is_empty());
    // An unknown tool in the thinking is not a call either.
    let out = run_pieces(
        &auto(),
        false,
        &[],
        &["[TOOL CALL]\n{\"name\":\"nope\",\"arguments\":{}}\n[END TOOL CALL]"],
    );
    assert!(out.calls.is_empty());
}

#[test]
fn a_demanded_call_written_only_while_thinking_is_taken_when_no_retry_is_left() {
    let thinking = ["[TOOL CALL]\n{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Rome\"}}\n[END TOOL CALL]"];
    let required = set_with(Choice::Required, true);
    // Streamed reasoning: no retry; the held prose, then the call.
    let out = run_pieces_in(true, &required, true, &["I'll check."], &thinking);
    assert_eq!(out.retry, None);
    assert_eq!(out.content, "I'll check.");
    assert_eq!(out.calls, [call("get_weather", r#"{"city":"Rome"}"#)]);
    // Under `auto` the prose stands (the thinking may have decided against the call), and
    // says that no tool ran.
    let out = run_pieces_in(true, &auto(), true, &["I'll check."], &thinking);
    assert!(out.calls.is_empty());
    assert!(out
        .content
        .starts_with("I'll check.\n\n(The model wrote its tool call while thinking"));
}

#[test]
fn review_a_prose_answer_about_the_format_is_prose() {
    // An opener on its own line that opens no block: the model talking about the format.
    let text = "Tools are called like this:\n[TOOL CALL]\nfollowed by a JSON object with the name and arguments.";
    let out = scan_with(&auto(), true, text);
    assert_eq!(out.retry, None);
    assert_eq!(out.content, text);
    // With a closer it is a block that does not read: a bad call.
    let out = scan_with(
        &auto(),
        true,
        "[TOOL CALL]\nget_weather city=Paris\n[END TOOL CALL]",
    );
    assert_eq!(out.retry, Some(Hint::BadCall));
}

#[test]
fn review_a_payload_in_a_sentence_is_a_call_when_a_closer_follows() {
    let out = scan("I'll read it: {\"name\":\"get_weather\",\"arguments\":{\"city\":\"Rome\"}}\n[END TOOL CALL]");
    assert_eq!(out.calls, [call("get_weather", r#"{"city":"Rome"}"#)]);
    assert_eq!(out.content, "I'll read it: ");
    // Without one it is the model's JSON (§6 test 14, also when the text ends right after).
    let example = "Example: {\"name\":\"get_weather\",\"arguments\":{}} and more.";
    assert_eq!(scan(example).content, example);
    assert_eq!(scan("See {\"name\":\"x\"}").content, "See {\"name\":\"x\"}");
}

#[test]
fn review_a_payload_with_its_arguments_first_is_a_call() {
    let body = "x".repeat(400);
    let text = format!("Writing it.\n{{\"arguments\": {{\"path\": \"a\", \"content\": \"{body}\"}}, \"name\": \"write_file\"}}\n[END TOOL CALL]");
    let out = scan(&text);
    assert_eq!(out.calls.len(), 1);
    assert_eq!(out.calls[0].0, "write_file");
    assert_eq!(out.content, "Writing it.\n");
}

#[test]
fn review_a_call_on_a_narration_line_and_a_bad_call_in_a_batch() {
    let text = format!("{PARIS}\nNext: [TOOL CALL] {{\"name\":\"get_weather\",\"arguments\":{{\"city\":\"Oslo\"}}}} [END TOOL CALL]");
    let out = scan(&text);
    assert_eq!(out.calls.len(), 2, "{out:?}");
    // A bad call after a valid one: the valid one goes out, the bad one is counted.
    let mut s = scanner(auto(), false);
    let mut rec = Recorder::default();
    s.content(
        &format!("{PARIS}\n[TOOL CALL]\n{{\"name\":\"nope\",\"arguments\":{{}}}}\n[END TOOL CALL]"),
        &mut rec,
    );
    s.flush(&mut rec);
    assert_eq!(rec.calls.len(), 1);
    assert_eq!(s.stats().abandoned, 1);
}

#[test]
fn review_calls_in_thinking_in_other_spellings_and_drafts() {
    let spellings = [
        "[TOOL_CALL]\n{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Rome\"}}\n[END_TOOL_CALL]",
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nRome\n</parameter>\n</function>\n</tool_call>",
        "[ TOOL CALL ]\n{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Rome\"}}\n[ END TOOL CALL ]",
    ];
    for thinking in spellings {
        let out = run_pieces_in(true, &auto(), true, &[""], &[thinking]);
        assert_eq!(
            out.calls,
            [call("get_weather", r#"{"city":"Rome"}"#)],
            "{thinking}"
        );
    }
    // A draft restated word for word is one call.
    let block = spellings[0];
    let out = run_pieces_in(true, &auto(), true, &[""], &[block, "\n\nSo:\n", block]);
    assert_eq!(out.calls.len(), 1);
    // An unknown tool in the thinking: asked again, the answer decided (not an empty stream).
    let mut s = scanner(auto(), true);
    let mut rec = Recorder::default();
    s.reasoning(
        "[TOOL CALL]\n{\"name\":\"nope\",\"arguments\":{}}\n[END TOOL CALL]",
        &mut rec,
    );
    s.flush(&mut rec);
    assert_eq!(s.retry(), Some(Hint::CallInThinking));
    assert_eq!(s.finish_reason(), Some(FinishReason::Complete));
}

#[test]
fn review_a_native_tool_response_after_a_call_ends_the_answer() {
    let out = scan(&format!(
        "{PARIS}\n<tool_response>\nsunny\n</tool_response>\n{PARIS}"
    ));
    assert_eq!(out.calls.len(), 1);
    assert_eq!(out.content, "");
    // Text after a call that starts with `<` and a multi-byte character is narration.
    let out = scan(&format!("{PARIS}\n<é>\n{PARIS}"));
    assert_eq!(out.calls.len(), 2);
}

#[test]
fn review_json_on_a_narration_line_without_a_closer_is_not_shown_after_a_call() {
    let out = scan(&format!(
        "{PARIS}\nThe data: {{\"name\": \"x\", \"v\": 1}} is fine."
    ));
    assert_eq!(out.calls.len(), 1);
    assert_eq!(out.content, "");
}

#[test]
fn a_function_tag_at_the_edge_of_the_payload_window_reads_the_same_in_any_split() {
    // A `<function=` that begins inside the window after an opener and ends past it: the
    // window closed on it when a piece ended inside the tag, so the same answer was a call
    // whole and prose in pieces (fuzz finding, tool_scan/function-tag-at-window-edge).
    let minimized = format!("<tool_call{}<function=", "\u{FFFD}".repeat(40));
    let out = every_split(&auto(), false, false, "", &minimized);
    assert_eq!(
        out.stats.invalid, 1,
        "a call the answer ended inside: {out:?}"
    );
    let block = "<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>";
    for pad in PAYLOAD_WINDOW - 12..=PAYLOAD_WINDOW + 2 {
        let text = format!("<tool_call>{}{block}\n</tool_call>", " ".repeat(pad));
        let out = every_split(&auto(), false, false, "", &text);
        // The tag begins `pad + 1` bytes after the opener (`>` included).
        if pad < PAYLOAD_WINDOW {
            assert_eq!(
                out.calls,
                [call("get_weather", r#"{"city":"Paris"}"#)],
                "pad {pad}"
            );
        } else {
            assert!(out.calls.is_empty(), "pad {pad}: {out:?}");
        }
        let cut = format!("<tool_call>{}<function=", " ".repeat(pad));
        every_split(&auto(), true, false, "", &cut);
    }
}

#[test]
fn an_opener_is_as_long_whole_as_in_pieces() {
    // `[TOOL CALL` at the end of a piece was taken whole, a byte shorter than the
    // `[TOOL CALLS` the next piece made of it: the payload window (counted from the
    // opener's end) reached one byte less far, and a payload at its edge was missed.
    let payload = r#"{"name":"get_weather","arguments":{"city":"Paris"}}"#;
    for opener in ["[TOOL CALLS]", "<tool_calls>", "[TOOL CALL]"] {
        for pad in PAYLOAD_WINDOW - 2..=PAYLOAD_WINDOW + 1 {
            let text = format!("{opener}{}{payload}", " ".repeat(pad));
            every_split(&auto(), false, false, "", &text);
            every_split(
                &auto(),
                false,
                false,
                "",
                &format!("{opener}{}", " ".repeat(pad)),
            );
        }
    }
}

#[test]
fn the_thinking_kept_for_a_call_is_the_same_in_any_split() {
    // The thinking is kept from its first opener on. The kept text began wherever the piece
    // that completed the opener began, so a payload written before the opener was read as
    // the call when the thinking came whole, and not in pieces (fuzz finding,
    // tool_scan/thinking-kept-text-depends-on-split). It is not the block's payload.
    let named = set_with(Choice::Named("get_weather".into()), false);
    for thinking in [
        r#"{"name":"getweather"}[TOOL CALL"#,
        "The call:\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n[TOOL CALL]",
    ] {
        let out = every_split(&named, false, false, thinking, "");
        assert!(out.calls.is_empty(), "{thinking:?}: {out:?}");
    }
    // A block after some thinking, written in any pieces, is the call.
    let thinking = "The user wants the weather, so:\n\n[TOOL CALL]\n{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Paris\"}}\n[END TOOL CALL]";
    for streaming in [false, true] {
        let out = every_split(&auto(), true, streaming, thinking, "");
        assert_eq!(out.calls, [call("get_weather", r#"{"city":"Paris"}"#)]);
    }
}

#[test]
fn the_narration_bound_is_the_same_whole_and_in_pieces() {
    // Narration after a call is skipped to find the next call, up to NARRATION_MAX bytes.
    // Skipped in pieces it was counted and ended the answer; with the next opener on the
    // same line, in the same piece, it was not counted, and the second call went out (fuzz
    // finding, tool_scan/narration-bound-depends-on-split).
    let call = "<tool_call>\n{\"name\":\"Write\"}";
    for n in NARRATION_MAX - 2..=NARRATION_MAX + 2 {
        for narration in ["x".repeat(n), format!("{}\u{FFFD}", "x".repeat(n - 3))] {
            let text = format!("{call}\n</tool_call>\n{narration}{call}\n</tool_call>");
            let out = every_split(&auto(), false, false, "", &text);
            // The narration runs from after the first closer (and the whitespace after it)
            // to the second opener.
            let skipped = narration.len();
            let calls = if skipped > NARRATION_MAX { 1 } else { 2 };
            assert_eq!(out.calls.len(), calls, "{skipped} bytes of narration");
            assert_eq!(out.content, "");
        }
    }
}

#[test]
fn a_result_marker_after_a_call_is_told_the_same_in_any_split() {
    // After a call, a result the model writes itself (`[TOOL RESULT …`) ends the answer.
    // It was read with any number of spaces before its words, but held back only until
    // eleven bytes had come: `[TOOL` and spaces at a piece's end was narration, and the
    // next call went out; whole, the same text ended the answer (fuzz finding,
    // tool_scan/result-marker-spacing). Now it is spelled as the openers are.
    for spaces in [1, 2, 3, 12] {
        let text = format!(
            "{PARIS}\n[TOOL{}RESULT #1]\nsunny\n{PARIS}",
            " ".repeat(spaces)
        );
        let out = every_split(&auto(), false, false, "", &text);
        let calls = if spaces <= 2 { 1 } else { 2 };
        assert_eq!(out.calls.len(), calls, "{spaces} spaces");
        assert_eq!(out.content, "");
    }
    for text in [
        format!("{PARIS}\n[/TOOL RESULT]\n{PARIS}"),
        format!("{PARIS}\n[ tool_result]\n{PARIS}"),
    ] {
        assert_eq!(every_split(&auto(), false, false, "", &text).calls.len(), 1);
    }
}
