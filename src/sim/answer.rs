//! Deterministic simulator answers, derived from the prompt so tests can predict them.
//!
//! * answer: `Simulated answer — 模拟回答: you said "<last line>".` where `<last line>` is
//!   the last non-empty line of the prompt (directives stripped), trimmed, at most 200
//!   characters. The em dash and the CJK text make every stream exercise multi-byte UTF-8.
//! * `long=N`: exactly N characters of a fixed filler text, cycled.
//! * thinking paragraphs and titles: fixed sentences around the same last line.
//! * with web search: `[[1]]` before the first clause mark (`:` `,` `.` `;` or `：，。；`) of
//!   the answer's prose (at its end if it has none) and `[[2]]` at the very end, after any
//!   tool calls; source 3 of the results is not cited. The default answer becomes
//!   `Simulated answer — 模拟回答[[1]]: you said "<last line>".[[2]]`.

/// The last line that says something, trimmed, at most 200 characters. The proxy's
/// per-turn tool reminder and retry hint, and the closing markers of folded calls and
/// results, are not what the user said.
pub fn last_line(prompt: &str) -> String {
    let line = prompt
        .lines()
        .map(str::trim)
        .rfind(|l| {
            !l.is_empty()
                && !l.starts_with("(Tools:")
                && !l.starts_with("Your previous ")
                && !matches!(*l, "[END TOOL RESULT]" | "[END TOOL CALL]")
        })
        .unwrap_or("");
    line.chars().take(200).collect()
}

pub fn answer(prompt: &str) -> String {
    format!(
        "Simulated answer — 模拟回答: you said \"{}\".",
        last_line(prompt)
    )
}

/// The second candidate of a dual-response stream (must never reach the client).
pub fn alternative_answer(prompt: &str) -> String {
    format!("ALTERNATIVE candidate for \"{}\".", last_line(prompt))
}

/// `text` with the first citation marker `[[1]]` placed as the module documentation says.
pub fn cite_first(text: &str) -> String {
    let at = text
        .find([':', ',', '.', ';', '：', '，', '。', '；'])
        .unwrap_or(text.len());
    format!("{}[[1]]{}", &text[..at], &text[at..])
}

const FILLER: &str =
    "Lorem ipsum dolor sit amet, 通义千问 consectetur adipiscing elit; sed do eiusmod tempor. ";

pub fn long_answer(chars: usize) -> String {
    FILLER.chars().cycle().take(chars).collect()
}

pub fn thinking(prompt: &str) -> (Vec<String>, Vec<String>) {
    let titles = vec![
        "Understanding the request".to_owned(),
        "Drafting the answer".to_owned(),
    ];
    let thoughts = vec![
        format!("The user wrote: \"{}\".", last_line(prompt)),
        "I will answer briefly — 简短回答。".to_owned(),
    ];
    (titles, thoughts)
}

/// Token estimate used for simulated usage (same heuristic as the proxy's limits).
pub fn tokens(text: &str) -> u64 {
    crate::translate::limits::estimate_tokens(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_predictable() {
        assert_eq!(
            answer("a\n\n  hello there  \n"),
            "Simulated answer — 模拟回答: you said \"hello there\"."
        );
        assert_eq!(
            last_line("what is up?\n(Tools: a, b. Call a tool only when it helps.)"),
            "what is up?"
        );
        assert_eq!(
            last_line("[TOOL RESULT #1: a]\nsunny\n[END TOOL RESULT]\n"),
            "sunny"
        );
        assert_eq!(long_answer(5), "Lorem");
        assert_eq!(
            cite_first(&answer("weather")),
            "Simulated answer — 模拟回答[[1]]: you said \"weather\"."
        );
        assert_eq!(cite_first("北京今天晴。"), "北京今天晴[[1]]。");
        assert_eq!(cite_first("no marks"), "no marks[[1]]");
        assert_eq!(long_answer(200).chars().count(), 200);
    }
}
