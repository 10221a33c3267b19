//! The platform's own function frames, harvested (tool-calling.md §3.7, §5.5).
//!
//! When the web model writes its native tool call, chat.qwen.ai intercepts it: the stream
//! carries `delta.function_call` frames — cumulative snapshots of the arguments, the last
//! one repeated — then a `role:"function"` frame with the platform's result ("Tool X does
//! not exists."), and the model goes on with that in context. The calls are real calls of
//! the client's tools: they are recovered here, in the order they were opened, and the
//! platform's result text never reaches the client.

use crate::translate::state::PlatformFrame;

/// A call the platform closed: its name and its last snapshot of the arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Harvested {
    pub name: String,
    pub arguments: String,
}

/// Snapshots in, closed calls out.
#[derive(Debug, Default)]
pub struct Harvester {
    /// Calls opened and not yet answered, oldest first.
    open: Vec<Harvested>,
    /// Calls opened in this response.
    opened: usize,
    /// Calls answered by a result frame.
    answered: usize,
}

impl Harvester {
    /// Feed one frame; a result frame returns the call it closes.
    pub fn feed(&mut self, frame: PlatformFrame<'_>) -> Option<Harvested> {
        match frame {
            PlatformFrame::Call { name, arguments } => {
                match self.open.last_mut() {
                    // The same call growing, its final snapshot repeated, or rewritten before
                    // it was complete: replace. A new call starts only on a clear boundary
                    // (another name, a complete snapshot followed by a different one, or
                    // empty arguments after some).
                    Some(last) if last.name == name && same_call(&last.arguments, arguments) => {
                        let shrinks = last.arguments.starts_with(arguments);
                        if !shrinks || arguments.len() >= last.arguments.len() {
                            last.arguments = arguments.to_owned();
                        }
                    }
                    // A different name, or arguments that do not continue the last ones:
                    // the next call.
                    _ => {
                        self.opened += 1;
                        self.open.push(Harvested {
                            name: name.to_owned(),
                            arguments: arguments.to_owned(),
                        });
                    }
                }
                None
            }
            PlatformFrame::Result { name } => {
                let at = self
                    .open
                    .iter()
                    .position(|c| c.name == name)
                    .or_else(|| (!self.open.is_empty()).then_some(0))?;
                self.answered += 1;
                Some(self.open.remove(at))
            }
        }
    }

    /// Every call the platform opened has been answered (and there was at least one).
    pub fn all_answered(&self) -> bool {
        self.opened > 0 && self.answered >= self.opened && self.open.is_empty()
    }

    /// Calls still open when the stream ended: the platform never answered them.
    pub fn take_open(&mut self) -> Vec<Harvested> {
        std::mem::take(&mut self.open)
    }
}

/// Whether `next` is a snapshot of the call whose last snapshot was `last`.
fn same_call(last: &str, next: &str) -> bool {
    if next.is_empty() && !last.is_empty() {
        return false;
    }
    let grows = next.starts_with(last) || last.starts_with(next);
    grows || serde_json::from_str::<serde::de::IgnoredAny>(last).is_err()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call<'a>(name: &'a str, arguments: &'a str) -> PlatformFrame<'a> {
        PlatformFrame::Call { name, arguments }
    }

    #[test]
    fn cumulative_snapshots_are_one_call_closed_by_its_result() {
        let mut h = Harvester::default();
        assert_eq!(h.feed(call("get_weather", "{\"ci")), None);
        assert_eq!(h.feed(call("get_weather", "{\"city\":\"Paris\"}")), None);
        assert_eq!(h.feed(call("get_weather", "{\"city\":\"Paris\"}")), None);
        assert!(!h.all_answered());
        let closed = h.feed(PlatformFrame::Result {
            name: "get_weather",
        });
        assert_eq!(
            closed,
            Some(Harvested {
                name: "get_weather".into(),
                arguments: "{\"city\":\"Paris\"}".into()
            })
        );
        assert!(h.all_answered());
    }

    #[test]
    fn calls_in_a_row_are_told_apart_and_closed_in_order() {
        let mut h = Harvester::default();
        h.feed(call("a", "{\"x\":1}"));
        h.feed(call("b", "{\"y\""));
        h.feed(call("b", "{\"y\":2}"));
        // Same name, arguments that do not continue: another call.
        h.feed(call("b", "{\"z\":3}"));
        let names: Vec<String> = ["a", "b", "b"]
            .into_iter()
            .filter_map(|n| h.feed(PlatformFrame::Result { name: n }))
            .map(|c| format!("{}{}", c.name, c.arguments))
            .collect();
        assert_eq!(names, ["a{\"x\":1}", "b{\"y\":2}", "b{\"z\":3}"]);
        assert!(h.all_answered());
        assert_eq!(h.feed(PlatformFrame::Result { name: "c" }), None);
    }
}
