use super::*;

fn day(s: &str) -> Day {
    Day::parse(s).unwrap()
}

fn turn(input: u64, output: u64, reasoning: u64) -> Counters {
    Counters {
        requests: 1,
        input_tokens: input,
        output_tokens: output,
        reasoning_tokens: reasoning,
        errors: 0,
    }
}

fn failed() -> Counters {
    Counters {
        requests: 1,
        errors: 1,
        ..Counters::default()
    }
}

fn ledger(days: u32, max_rows: usize) -> Ledger {
    Ledger::new(Limits { days, max_rows }, None)
}

fn query(from: &str, to: &str, by: &str) -> Query {
    Query {
        from: day(from),
        to: day(to),
        by: Grouping::parse(by).unwrap(),
    }
}

fn report(l: &Ledger, q: Query) -> Report {
    futures::executor::block_on(l.report(q))
}

#[test]
fn days_parse_print_and_reject_what_is_not_a_date() {
    assert_eq!(Day::of_epoch_secs(0).to_string(), "1970-01-01");
    assert_eq!(Day::of_epoch_secs(86_399).to_string(), "1970-01-01");
    assert_eq!(Day::of_epoch_secs(86_400).to_string(), "1970-01-02");
    // 2024-02-29T12:00:00Z
    assert_eq!(Day::of_epoch_secs(1_709_208_000).to_string(), "2024-02-29");
    for s in ["2024-02-29", "2026-12-31", "2000-03-01", "9999-12-31"] {
        assert_eq!(day(s).to_string(), s);
    }
    assert_eq!(day("2026-03-01").0 - day("2026-02-28").0, 1);
    for bad in [
        "2026-02-29",
        "2026-13-01",
        "2026-00-10",
        "2026-01-32",
        "2026-1-01",
        "1969-12-31",
        "2026/01/01",
        "+026-01-01",
        "2026-01-0a",
        "",
        "today",
    ] {
        assert_eq!(Day::parse(bad), None, "{bad}");
    }
}

#[test]
fn turns_add_up_per_day_account_key_and_model() {
    let l = ledger(30, 100);
    let d1 = day("2026-03-01");
    l.record_on(d1, RowKey::new("a1", "k1", "m"), &turn(10, 5, 2));
    l.record_on(d1, RowKey::new("a1", "k1", "m"), &turn(1, 1, 0));
    l.record_on(d1, RowKey::new("a2", "k1", "m"), &failed());
    l.record_on(d1.plus(1), RowKey::new("a1", "k2", "m"), &turn(7, 3, 0));

    let all = report(
        &l,
        query("2026-03-01", "2026-03-02", "day,account,key,model"),
    );
    assert_eq!(all.rows.len(), 3);
    let first = &all.rows[0];
    assert_eq!(
        first.0,
        [
            Some("2026-03-01".to_owned()),
            Some("a1".to_owned()),
            Some("k1".to_owned()),
            Some("m".to_owned())
        ]
    );
    assert_eq!(
        first.1,
        Counters {
            requests: 2,
            input_tokens: 11,
            output_tokens: 6,
            reasoning_tokens: 2,
            errors: 0
        }
    );
    assert_eq!(
        all.totals,
        Counters {
            requests: 4,
            input_tokens: 18,
            output_tokens: 9,
            reasoning_tokens: 2,
            errors: 1
        }
    );

    // By key: the days and accounts summed over.
    let by_key = report(&l, query("2026-03-01", "2026-03-02", "key"));
    let keys: Vec<_> = by_key
        .rows
        .iter()
        .map(|(g, c)| (g[2].clone().unwrap(), c.requests, c.input_tokens))
        .collect();
    assert_eq!(keys, [("k1".to_owned(), 3, 11), ("k2".to_owned(), 1, 7)]);
    assert!(by_key
        .rows
        .iter()
        .all(|(g, _)| g[0].is_none() && g[1].is_none()));
    assert_eq!(by_key.totals, all.totals);

    // A range is inclusive, and only its days count.
    let second_day = report(&l, query("2026-03-02", "2026-03-02", "account"));
    assert_eq!(second_day.totals.input_tokens, 7);
    assert_eq!(second_day.rows.len(), 1);
}

#[test]
fn days_beyond_the_kept_ones_are_dropped() {
    let l = ledger(3, 100);
    let today = day("2026-03-10");
    for back in 0..5 {
        l.record_on(
            today.plus(-back),
            RowKey::new("a", "k", "m"),
            &turn(1, 0, 0),
        );
    }
    l.prune(today);
    let r = report(&l, query("2026-01-01", "2026-03-10", "day"));
    let days: Vec<_> = r.rows.iter().map(|(g, _)| g[0].clone().unwrap()).collect();
    assert_eq!(days, ["2026-03-08", "2026-03-09", "2026-03-10"]);
    // The next day: one more goes.
    l.prune(today.plus(1));
    assert_eq!(
        report(&l, query("2026-01-01", "2026-03-11", "day"))
            .rows
            .len(),
        2
    );
}

#[test]
fn rows_beyond_a_days_cap_count_as_other() {
    let l = ledger(30, 3);
    let d = day("2026-03-01");
    for i in 0..10 {
        l.record_on(d, RowKey::new("a", &format!("k{i}"), "m"), &turn(1, 1, 0));
    }
    // A row admitted before the cap keeps counting in its own row.
    l.record_on(d, RowKey::new("a", "k0", "m"), &turn(1, 1, 0));
    // Another day has its own cap.
    l.record_on(d.plus(1), RowKey::new("a", "k9", "m"), &turn(1, 1, 0));
    let r = report(
        &l,
        query("2026-03-01", "2026-03-01", "day,account,key,model"),
    );
    assert_eq!(r.rows.len(), 4, "{:?}", r.rows);
    let other = r
        .rows
        .iter()
        .find(|(g, _)| g[2].as_deref() == Some(OTHER))
        .unwrap();
    assert_eq!(other.1.requests, 7);
    assert_eq!(r.totals.requests, 11);
    let k0 = r
        .rows
        .iter()
        .find(|(g, _)| g[2].as_deref() == Some("k0"))
        .unwrap();
    assert_eq!(k0.1.requests, 2);
    let next = report(&l, query("2026-03-02", "2026-03-02", "key"));
    assert_eq!(next.rows[0].0[2].as_deref(), Some("k9"));
}

#[test]
fn names_lose_control_characters_and_excess_length() {
    let k = RowKey::new("a\tb\nc", &"x".repeat(500), "m\r");
    assert_eq!(k.account, "a b c");
    assert_eq!(k.key.len(), MAX_NAME_CHARS);
    assert_eq!(k.model, "m ");
}

#[test]
fn json_rows_carry_only_the_grouped_fields() {
    let l = ledger(30, 100);
    l.record_on(
        day("2026-03-01"),
        RowKey::new("a", "k", "m"),
        &turn(3, 2, 1),
    );
    let v = report(&l, query("2026-03-01", "2026-03-01", "account,model")).to_json();
    assert_eq!(v["from"], "2026-03-01");
    assert_eq!(v["by"], json!(["account", "model"]));
    assert_eq!(v["source"], "memory");
    assert_eq!(
        v["rows"],
        json!([{"account": "a", "model": "m", "requests": 1, "input_tokens": 3,
                "output_tokens": 2, "reasoning_tokens": 1, "errors": 0}])
    );
    assert_eq!(v["totals"]["reasoning_tokens"], 1);
}

#[test]
fn csv_quotes_what_needs_it_and_defuses_formulas() {
    assert_eq!(csv_field("plain"), "plain");
    assert_eq!(csv_field("a,b"), "\"a,b\"");
    assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    assert_eq!(csv_field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
    for lead in ["+1", "-1", "@SUM(A1)"] {
        assert_eq!(csv_field(lead), format!("'{lead}"));
    }
    let l = ledger(30, 100);
    l.record_on(
        day("2026-03-01"),
        RowKey::new("acct, \"one\"", "k", "=cmd"),
        &turn(3, 2, 0),
    );
    let csv = report(
        &l,
        query("2026-03-01", "2026-03-01", "day,account,key,model"),
    )
    .to_csv();
    assert_eq!(
        csv,
        "day,account,key,model,requests,input_tokens,output_tokens,reasoning_tokens,errors\r\n\
         2026-03-01,\"acct, \"\"one\"\"\",k,'=cmd,1,3,2,0,0\r\n"
    );
}

#[test]
fn groupings_parse() {
    assert_eq!(
        Grouping::parse("day,account,key,model"),
        Some(Grouping::ALL)
    );
    assert_eq!(Grouping::parse("model").unwrap().fields(), ["model"]);
    assert_eq!(
        Grouping::parse(" key , day ").unwrap().fields(),
        ["day", "key"]
    );
    assert_eq!(Grouping::parse("tenant"), None);
    assert_eq!(Grouping::parse(""), None);
}
