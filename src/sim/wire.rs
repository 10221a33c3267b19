//! Upstream frames, byte for byte as captured: Python-style `", "`/`": "` separators,
//! the hand-formatted `response.created` line with its trailing space, cumulative usage of
//! varying shape, and error bodies of `qwen-protocol.md` §6.

use std::fmt::Write;

fn js(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

fn js_list(items: &[String]) -> String {
    let parts: Vec<String> = items.iter().map(|s| js(s)).collect();
    format!("[{}]", parts.join(", "))
}

/// Wrap a JSON payload as one SSE event.
pub fn event(json: &str) -> String {
    format!("data: {json}\n\n")
}

/// Frame 1, with the capture's mixed spacing and trailing space.
pub fn response_created(chat_id: &str, parent_id: &str, response_id: &str, index: u32) -> String {
    format!(
        "data: {{\"response.created\":{{\"chat_id\": \"{chat_id}\", \"parent_id\": \"{parent_id}\", \"response_id\":\"{response_id}\", \"response_index\": \"{index}\"}}}} \n\n"
    )
}

/// Cumulative usage; `shape` varies the fields present, as the upstream does.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    pub reasoning: Option<u64>,
}

fn usage_json(u: Usage, shape: usize) -> String {
    let total = u.input + u.output;
    match (u.reasoning, shape % 3) {
        (Some(r), _) => format!(
            "{{\"input_tokens\": {}, \"output_tokens\": {}, \"total_tokens\": {total}, \"output_tokens_details\": {{\"reasoning_tokens\": {r}, \"text_tokens\": {}}}}}",
            u.input, u.output, u.output
        ),
        (None, 0) => format!(
            "{{\"input_tokens\": {}, \"output_tokens\": {}, \"characters\": 0, \"total_tokens\": {total}, \"input_tokens_details\": {{\"text_tokens\": {}}}, \"output_tokens_details\": {{\"text_tokens\": {}}}, \"prompt_tokens_details\": {{\"cached_tokens\": 0}}}}",
            u.input, u.output, u.input, u.output
        ),
        (None, 1) => format!("{{\"input_tokens\": {}, \"output_tokens\": {}}}", u.input, u.output),
        (None, _) => format!(
            "{{\"input_tokens\": {}, \"output_tokens\": {}, \"total_tokens\": {total}}}",
            u.input, u.output
        ),
    }
}

/// An answer (or other phase) delta with usage.
pub fn delta(
    response_id: &str,
    phase: &str,
    content: &str,
    usage: Usage,
    shape: usize,
    ts: u64,
) -> String {
    event(&format!(
        "{{\"choices\": [{{\"delta\": {{\"role\": \"assistant\", \"content\": {}, \"phase\": \"{phase}\", \"status\": \"typing\"}}}}], \"response_id\": \"{response_id}\", \"usage\": {}, \"timestamp\": {ts}}}",
        js(content),
        usage_json(usage, shape)
    ))
}

/// A cumulative thinking-summary frame.
pub fn thinking(
    response_id: &str,
    titles: &[String],
    thoughts: &[String],
    usage: Usage,
    ts: u64,
) -> String {
    event(&format!(
        "{{\"choices\": [{{\"delta\": {{\"role\": \"assistant\", \"content\": \"\", \"phase\": \"thinking_summary\", \"extra\": {{\"summary_title\": {{\"content\": {}}}, \"summary_thought\": {{\"content\": {}}}}}, \"status\": \"typing\"}}}}], \"response_id\": \"{response_id}\", \"usage\": {}, \"timestamp\": {ts}}}",
        js_list(titles),
        js_list(thoughts),
        usage_json(usage, 0)
    ))
}

/// `status: finished` for a phase (for `answer` this is the end of the response).
pub fn finished(response_id: &str, phase: &str, ts: Option<u64>) -> String {
    let mut s = format!(
        "{{\"choices\": [{{\"delta\": {{\"content\": \"\", \"role\": \"assistant\", \"status\": \"finished\", \"phase\": \"{phase}\"}}}}], \"response_id\": \"{response_id}\""
    );
    if let Some(ts) = ts {
        let _ = write!(s, ", \"timestamp\": {ts}");
    }
    s.push('}');
    event(&s)
}

/// An empty `typing` frame (the capture has two before `finished`).
pub fn empty_typing(response_id: &str, usage: Usage, ts: u64) -> String {
    delta(response_id, "answer", "", usage, 0, ts)
}

/// A synthetic long answer for benchmarks and allocation tests: `response.created`, then `n`
/// short answer deltas with growing usage in the rotating captured shapes (no `finished`).
pub fn long_answer_events(n: usize) -> Vec<String> {
    const WORDS: [&str; 7] = ["Hello", " wor", "ld, ", "通义", "千问 ", "and ", "more"];
    let mut out = vec![response_created("c", "u", "r", 0)];
    out.extend((0..n).map(|i| {
        let usage = Usage {
            input: 1049,
            output: i as u64 + 1,
            reasoning: None,
        };
        delta(
            "r",
            "answer",
            WORDS[i % WORDS.len()],
            usage,
            i,
            1_780_000_000,
        )
    }));
    out
}

/// A tool call the platform intercepted in the answer phase: one cumulative snapshot of
/// its arguments (no `function_id`: that marks the platform's own tools).
pub fn intercepted_call(response_id: &str, name: &str, arguments: &str, ts: u64) -> String {
    event(&format!(
        "{{\"choices\": [{{\"delta\": {{\"role\": \"assistant\", \"content\": \"\", \"phase\": \"answer\", \"status\": \"typing\", \"function_call\": {{\"name\": {}, \"arguments\": {}}}}}}}], \"response_id\": \"{response_id}\", \"timestamp\": {ts}}}",
        js(name),
        js(arguments)
    ))
}

/// The platform's result for an intercepted call: it has no such tool.
pub fn intercepted_result(response_id: &str, name: &str, ts: u64) -> String {
    event(&format!(
        "{{\"choices\": [{{\"delta\": {{\"role\": \"function\", \"content\": {}, \"phase\": \"answer\", \"status\": \"typing\", \"name\": {}}}}}], \"response_id\": \"{response_id}\", \"timestamp\": {ts}}}",
        js(&format!("Tool {name} does not exists.")),
        js(name)
    ))
}

/// The built-in web search tool call and its result frame (§5.9): three sources for
/// `query` — `https://example.{com,org,net}/search/{n}/{slug}`, titled `Result {n}: {query}`
/// — the first with the `hostlogo` and `date` fields of the capture, the others without
/// (parsers must take both shapes). The answer cites sources 1 and 2 (`script.rs`).
pub fn web_search(response_id: &str, query: &str, ts: u64) -> [String; 2] {
    let args = js(&format!("{{\"queries\": [{}]}}", js(query)));
    [
        event(&format!(
            "{{\"choices\":[{{\"delta\":{{\"role\":\"assistant\",\"content\":\"\",\"phase\":\"web_search\",\"status\":\"typing\",\"function_call\":{{\"name\":\"web_search\",\"arguments\":{args}}},\"function_id\":\"call_sim0001\",\"extra\":{{\"display_position\":\"think\"}}}}}}],\"response_id\":\"{response_id}\",\"timestamp\":{ts}}}"
        )),
        event(&format!(
            "{{\"choices\":[{{\"delta\":{{\"role\":\"function\",\"content\":\"\",\"phase\":\"web_search\",\"status\":\"finished\",\"name\":\"web_search\",\"function_id\":\"call_sim0001\",\"extra\":{{\"web_search_info\":{}}}}}}}],\"response_id\":\"{response_id}\",\"timestamp\":{ts}}}",
            search_sources(query)
        )),
    ]
}

/// The hosts of the three simulated search sources, in order.
pub const SEARCH_HOSTS: [&str; 3] = ["example.com", "example.org", "example.net"];

/// The `web_search_info` list for `query`.
fn search_sources(query: &str) -> String {
    let slug = slug(query);
    let shown: String = query.chars().take(60).collect();
    let sources: Vec<String> = SEARCH_HOSTS
        .iter()
        .zip(1..)
        .map(|(host, n)| {
            let url = js(&format!("https://{host}/search/{n}/{slug}"));
            let title = js(&format!("Result {n}: {shown}"));
            let snippet = js(&format!("Simulated search result {n} for \"{shown}\"."));
            let logo = if n == 1 {
                format!(",\"hostlogo\":\"https://{host}/favicon.ico\",\"date\":\"\"")
            } else {
                String::new()
            };
            format!("{{\"url\":{url},\"title\":{title},\"snippet\":{snippet},\"hostname\":\"{host}\"{logo}}}")
        })
        .collect();
    format!("[{}]", sources.join(","))
}

/// A URL path segment for `query`: its ASCII letters and digits in lower case, every other
/// run of characters one `-`, at most 40 characters; `q` when nothing is left (a query in
/// CJK).
fn slug(query: &str) -> String {
    let mut out = String::new();
    for c in query.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
        if out.len() >= 40 {
            break;
        }
    }
    let out = out.trim_end_matches('-');
    if out.is_empty() {
        "q".to_owned()
    } else {
        out.to_owned()
    }
}

/// An `image_gen` typing frame (§5.10): empty while the picture is drawn, then the picture's
/// URL as content with its `[[height, width]]` in `extra.output_image_hw`.
pub fn image_gen(response_id: &str, url: Option<(&str, u32, u32)>) -> String {
    let (content, extra) = match url {
        Some((url, width, height)) => (
            js(url),
            format!(",\"extra\":{{\"output_image_hw\":[[{height},{width}]]}}"),
        ),
        None => ("\"\"".to_owned(), String::new()),
    };
    event(&format!(
        "{{\"choices\":[{{\"delta\":{{\"role\":\"assistant\",\"content\":{content},\"phase\":\"image_gen\",\"status\":\"typing\"{extra}}}}}],\"response_id\":\"{response_id}\"}}"
    ))
}

/// The end of a t2i response: `image_gen` finished (no answer phase follows).
pub fn image_gen_finished(response_id: &str) -> String {
    event(&format!(
        "{{\"choices\":[{{\"delta\":{{\"role\":\"assistant\",\"content\":\"\",\"phase\":\"image_gen\",\"status\":\"finished\"}}}}],\"response_id\":\"{response_id}\"}}"
    ))
}

/// E1 for the account's daily image generations (`num` = hours).
pub fn image_rate_limited_json(request_id: &str, hours: f64) -> String {
    format!(
        "{{\"success\":false,\"request_id\":\"{request_id}\",\"data\":{{\"code\":\"RateLimited\",\"details\":\"You've reached the upper limit for today's image generation.\",\"template\":\"You have reached the daily image generation limit. Please wait {{{{num}}}} hours before trying again.\",\"num\":{hours}}}}}"
    )
}

pub fn rate_limited_json(request_id: &str, hours: f64) -> String {
    format!(
        "{{\"success\":false,\"request_id\":\"{request_id}\",\"data\":{{\"code\":\"RateLimited\",\"details\":\"You've reached the upper limit for today's usage.\",\"template\":\"You have reached the daily usage limit. Please wait {{{{num}}}} hours before trying again.\",\"num\":{hours}}}}}"
    )
}

pub fn bad_request_json(request_id: &str, code: &str, details: &str) -> String {
    format!(
        "{{\"success\":false,\"request_id\":\"{request_id}\",\"data\":{{\"code\":\"{code}\",\"details\":{}}}}}",
        js(details)
    )
}

pub const PUNISH_JSON: &str = "{\"ret\":[\"FAIL_SYS_USER_VALIDATE\",\"RGV587_ERROR::SM::哎哟喂,被挤爆啦,请稍后重试\"],\"data\":{\"url\":\"https://chat.qwen.ai:443//api/v2/chat/completions/_____tmd_____/punish?x5secdata=xg1ecsim__bx__chat.qwen.ai:443/api/v2/chat/completions&x5step=2&action=captcha&pureCaptcha=\"}}";

/// The punish document's newer variant: its slider URL asks for `action=captchaconnect`.
pub const PUNISH_CAPTCHACONNECT_JSON: &str = "{\"ret\":[\"FAIL_SYS_USER_VALIDATE\",\"RGV587_ERROR::SM::哎哟喂,被挤爆啦,请稍后重试\"],\"data\":{\"url\":\"https://chat.qwen.ai:443//api/v2/chat/completions/_____tmd_____/punish?x5secdata=xg1ecsim__bx__chat.qwen.ai:443/api/v2/chat/completions&x5step=2&action=captchaconnect&pureCaptcha=\"}}";

/// A disabled (banned) account: wire 403.
pub const ACCOUNT_DISABLED_JSON: &str =
    "{\"success\":false,\"data\":{\"code\":\"Forbidden\",\"details\":\"account is disabled\"}}";

/// auth.qwen.ai's answer to a request without its front-end headers: wire 400.
pub const INVALID_REQUEST_HEADER_JSON: &str =
    "{\"success\":false,\"data\":{\"code\":\"Bad_Request\",\"details\":\"Invalid request header\"}}";

/// auth.qwen.ai's answer to an unknown or already used refresh token: wire 401.
pub fn refresh_token_invalid_json(code: &str) -> String {
    format!(
        "{{\"success\":false,\"data\":{{\"code\":\"{code}\",\"details\":\"refresh token is invalid\"}}}}"
    )
}

pub fn waf_html() -> String {
    let mut page = String::from(
        "<!doctypehtml><meta charset=\"UTF-8\"><meta name=\"aliyun_waf_aa\" content=\"ff926c7f07e45e2e487a29a6197d3460\"><meta name=\"aliyun_waf_bb\" content=\"eade71455e2ad9c6d08b82bc7d98df8c\"><title></title><script>",
    );
    // Roughly the size of the real slider page.
    for i in 0..400 {
        let _ = write!(page, "var _0x{i:04x}=\"captcha-slider-acw_sc__v2\";");
    }
    page.push_str("</script>");
    page
}

/// The in-stream error that ends the running streams of an account banned meanwhile.
pub const ACCOUNT_DISABLED_FRAME: &str =
    "{\"error\":{\"code\":\"Forbidden\",\"details\":\"account is disabled\"}}";
pub const INTERNAL_ERROR_FRAME: &str = "{\"error\":\"Internal error!\"}";
pub const QUOTA_FRAME: &str = "{\"error\":{\"code\":\"internal_error\",\"details\":\"Allocated quota exceeded, please increase your quota limit. For details, see: https://help.aliyun.com/zh/model-studio/error-code#token-limit\"}}";
pub const MODERATION_OUTPUT_FRAME: &str = "{\"error\":{\"code\":\"data_inspection_failed\",\"details\":\"内容安全警告：输出内容可能包含不适当的内容！\"}}";
pub const INVALID_INPUT_FRAME: &str =
    "{\"error\":{\"code\":\"invalid_input\",\"details\":\"输入或附件无效。请检查后重试。\"}}";
pub const MODERATION_INPUT_DETAILS: &str = "内容安全警告：输入数据可能包含不适当的内容！";
