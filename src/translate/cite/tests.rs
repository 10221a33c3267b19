use super::*;
use crate::translate::state::{Citation, Emit, Source};

/// Content and citations as `(url, start, end)`, in the order they were passed on.
#[derive(Default)]
struct Out {
    content: String,
    /// `c:<text>` or `a:<url> <start>..<end>`.
    events: Vec<String>,
}

impl Emit for Out {
    fn reasoning(&mut self, _: &str) {}
    fn content(&mut self, text: &str) {
        self.content.push_str(text);
        self.events.push(format!("c:{text}"));
    }
    fn citation(&mut self, c: &Citation<'_>) {
        self.events
            .push(format!("a:{} {}..{}", c.url, c.start, c.end));
    }
}

const SOURCES: [Source<'static>; 3] = [
    Source {
        url: "https://a.example/1",
        title: "One",
    },
    Source {
        url: "https://b.example/2",
        title: "Two [draft]",
    },
    Source {
        url: "https://c.example/3",
        title: "Three",
    },
];

fn run(footnotes: bool, pieces: &[&str]) -> Out {
    let mut stage = Citations::new(footnotes);
    let mut out = Out::default();
    stage.sources(&SOURCES, &mut out);
    for p in pieces {
        stage.content(p, &mut out);
    }
    stage.flush(&mut out);
    out
}

fn citations(out: &Out) -> Vec<&str> {
    out.events
        .iter()
        .filter_map(|e| e.strip_prefix("a:"))
        .collect()
}

#[test]
fn a_marker_is_cited_where_it_stands_in_characters() {
    // "Héllo " is 6 characters (7 bytes): the marker spans characters 6..11.
    let out = run(false, &["Héllo [[1]] world [[2]]."]);
    assert_eq!(out.content, "Héllo [[1]] world [[2]].");
    assert_eq!(
        citations(&out),
        [
            "https://a.example/1 6..11",
            "https://b.example/2 18..23",
            // Never cited: an empty range at the end.
            "https://c.example/3 24..24",
        ]
    );
}

#[test]
fn a_marker_split_across_chunks_is_held_until_complete() {
    let out = run(false, &["Sunny [", "[", "1", "]", "] and warm[[2", "]]"]);
    assert_eq!(out.content, "Sunny [[1]] and warm[[2]]");
    assert_eq!(
        &citations(&out)[..2],
        ["https://a.example/1 6..11", "https://b.example/2 20..25"]
    );
    // The citation follows the content that completes its marker, never precedes it.
    let first_citation = out.events.iter().position(|e| e.starts_with("a:")).unwrap();
    assert_eq!(
        out.events[..first_citation].concat().replace("c:", ""),
        "Sunny [[1]]"
    );
}

#[test]
fn text_that_only_looks_like_a_marker_passes_unchanged() {
    let out = run(false, &["x[[a]] y[[1234]] z[[0]] w[[9]] v[", "[[3]] end ["]);
    assert_eq!(out.content, "x[[a]] y[[1234]] z[[0]] w[[9]] v[[[3]] end [");
    // Only [[3]] names a source; [[0]] and [[9]] name none.
    assert_eq!(
        citations(&out),
        [
            "https://c.example/3 33..38",
            "https://a.example/1 44..44",
            "https://b.example/2 44..44",
        ]
    );
}

#[test]
fn without_sources_nothing_is_held_or_cited() {
    let mut stage = Citations::new(true);
    let mut out = Out::default();
    for p in ["code: a[[1]", "] and [["] {
        stage.content(p, &mut out);
    }
    assert_eq!(out.events, ["c:code: a[[1]", "c:] and [["]);
    stage.flush(&mut out);
    assert_eq!(out.content, "code: a[[1]] and [[");
    assert!(citations(&out).is_empty());
}

#[test]
fn footnotes_list_every_source_and_cite_the_uncited_ones_there() {
    let out = run(true, &["It is sunny [[2]]."]);
    let expected = "It is sunny [[2]].\n\n**Sources**\n\
                    1. [One](https://a.example/1)\n\
                    2. [Two (draft)](https://b.example/2)\n\
                    3. [Three](https://c.example/3)\n";
    assert_eq!(out.content, expected);
    let at = |needle: &str| expected[..expected.find(needle).unwrap()].chars().count();
    let one = at("[One]");
    let three = at("[Three]");
    assert_eq!(
        citations(&out),
        [
            "https://b.example/2 12..17".to_owned(),
            format!(
                "https://a.example/1 {one}..{}",
                one + "[One](https://a.example/1)".len()
            ),
            format!(
                "https://c.example/3 {three}..{}",
                three + "[Three](https://c.example/3)".len()
            ),
        ]
    );
}

#[test]
fn a_source_without_a_web_address_is_numbered_but_never_linked() {
    let mut stage = Citations::new(true);
    let mut out = Out::default();
    let sources = [
        Source {
            url: "",
            title: "javascript:alert(1)",
        },
        Source {
            url: "https://ok.example/a b(c)",
            title: "Ok",
        },
    ];
    stage.sources(&sources, &mut out);
    stage.content("[[1]] [[2]]", &mut out);
    stage.flush(&mut out);
    assert_eq!(
        out.content,
        "[[1]] [[2]]\n\n**Sources**\n2. [Ok](https://ok.example/a%20b%28c%29)\n"
    );
    assert_eq!(citations(&out), ["https://ok.example/a b(c) 6..11"]);
}
