use super::*;

#[test]
fn sizes_map_to_the_ratios_the_upstream_draws() {
    for (size, want) in [
        ("1024x1024", "1:1"),
        ("256x256", "1:1"),
        ("auto", "1:1"),
        ("1792x1024", "16:9"),
        ("1024x1792", "9:16"),
        ("1536x1024", "3:2"),
        ("1024x1536", "2:3"),
        ("1280x960", "4:3"),
        ("960 X 1280", "3:4"),
        ("16:9", "16:9"),
    ] {
        assert_eq!(ratio(size), Some(want), "{size}");
    }
    for size in [
        "1000x300",
        "0x100",
        "100x0",
        "9000x9000",
        "wide",
        "16:10",
        "1024",
        "x1024",
        "",
    ] {
        assert_eq!(ratio(size), None, "{size}");
    }
}

fn parsed(body: &str) -> ApiRequest<ImageOptions> {
    parse(body.as_bytes()).unwrap()
}

fn refused(body: &str) -> (String, Option<String>) {
    match parse(body.as_bytes()) {
        Err(ProxyError::BadRequest { message, param, .. }) => (message, param),
        other => panic!("expected a 400 for {body}, got {other:?}"),
    }
}

#[test]
fn a_request_becomes_one_image_turn_with_its_options() {
    let r = parsed(
        r#"{"prompt":"a red fox","n":3,"size":"1792x1024","response_format":"b64_json","model":"qwen3.7-plus","quality":"hd","style":"vivid","user":"u"}"#,
    );
    assert_eq!(
        r.options,
        ImageOptions {
            n: 3,
            format: ImageFormat::B64Json
        }
    );
    assert_eq!(r.turn.output, Output::Image { ratio: "16:9" });
    assert_eq!(r.turn.model, "qwen3.7-plus");
    assert!(!r.turn.stream);
    assert_eq!(r.turn.messages.len(), 1);
    assert_eq!(r.turn.messages[0].text(), "a red fox");
    // Defaults: one square image by address, the default drawing model.
    let r = parsed(r#"{"prompt":"x"}"#);
    assert_eq!(
        r.options,
        ImageOptions {
            n: 1,
            format: ImageFormat::Url
        }
    );
    assert_eq!(r.turn.output, Output::Image { ratio: "1:1" });
    assert_eq!(r.turn.model, "");
    // OpenAI's own model names mean "the default".
    assert_eq!(
        parsed(r#"{"prompt":"x","model":"dall-e-3"}"#).turn.model,
        ""
    );
    assert_eq!(
        parsed(r#"{"prompt":"x","model":"gpt-image-1"}"#).turn.model,
        ""
    );
}

#[test]
fn what_cannot_be_honoured_is_a_400_naming_the_parameter() {
    for (body, param) in [
        (r#"{}"#, "prompt"),
        (r#"{"prompt":"  "}"#, "prompt"),
        (r#"{"prompt":3}"#, "prompt"),
        (r#"{"prompt":"x","n":0}"#, "n"),
        (r#"{"prompt":"x","n":5}"#, "n"),
        (r#"{"prompt":"x","n":1.5}"#, "n"),
        (r#"{"prompt":"x","size":"1000x300"}"#, "size"),
        (r#"{"prompt":"x","size":1024}"#, "size"),
        (
            r#"{"prompt":"x","response_format":"base64"}"#,
            "response_format",
        ),
        (r#"{"prompt":"x","stream":true}"#, "stream"),
        (r#"{"prompt":"x","stream":"true"}"#, "stream"),
        (r#"{"prompt":"x","response_format":7}"#, "response_format"),
        (r#"{"prompt":"x","n":300}"#, "n"),
        (r#"{"prompt":"x","output_format":"jpeg"}"#, "output_format"),
        (r#"{"prompt":"x","background":"transparent"}"#, "background"),
        (r#"{"prompt":"x","model":7}"#, "model"),
    ] {
        assert_eq!(refused(body).1.as_deref(), Some(param), "{body}");
    }
    let (message, _) = refused(r#"{"prompt":"x","size":"1000x300"}"#);
    assert!(
        message.contains("16:9") && message.contains("1792x1024"),
        "{message}"
    );
    let long = format!(r#"{{"prompt":"{}"}}"#, "é".repeat(MAX_PROMPT_CHARS + 1));
    assert_eq!(refused(&long).1.as_deref(), Some("prompt"));
    assert!(parse(b"[1]").is_err());
}
