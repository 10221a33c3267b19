//! The core's turn loop (`converse::TurnState`), driven step by step against an upstream
//! (the in-process simulator) — written by the turn-state unit tests.
