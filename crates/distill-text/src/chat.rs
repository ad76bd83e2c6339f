//! Conversations: records that hold turns instead of text, rendered by the model's chat
//! template, with a mask of the tokens the student learns (the assistant's).
//!
//! A record (a JSONL line, a Parquet row) is a conversation when it has `messages` — a list of
//! `{"role": …, "content": …}` turns — or, lacking a `text` string, `prompt` + `completion` (each
//! a string, taken as a user turn and an assistant turn, or a list of turns); field names per
//! [`RecordFields`]. Roles are
//! `system`, `user`, `assistant` and `tool`; a conversation has at least one assistant turn.
//!
//! **The assistant mask** is found by rendering prefixes, as one checks it with transformers'
//! `apply_chat_template`: for the assistant turn `i`, the text the template renders for turns
//! `..i` with the generation prompt ends where the turn starts, and the text it renders for turns
//! `..=i` ends where it stops (its end-of-turn marker included: the student learns to stop). Each
//! is checked to be a prefix of the whole conversation's text; a template for which they are
//! not is refused. A token is an assistant token when its first byte lies in such a span.

use std::ops::Range;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::RecordFields;

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Message {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The turn's text.
    pub content: String,
}

impl Message {
    /// A turn of `role`.
    pub fn new(role: &str, content: &str) -> Self {
        Message { role: role.into(), content: content.into() }
    }

    /// A user turn.
    pub fn user(content: &str) -> Self {
        Message::new("user", content)
    }

    /// An assistant turn.
    pub fn assistant(content: &str) -> Self {
        Message::new("assistant", content)
    }
}

/// The roles a conversation may hold.
pub const ROLES: &[&str] = &["system", "user", "assistant", "tool"];

/// What one record holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A text document.
    Text(String),
    /// A conversation.
    Conversation(Vec<Message>),
}

/// A model's chat template: renders turns as the model saw them in training.
pub trait ChatTemplate: Sync {
    /// The text of `messages`; with `add_generation_prompt` it ends where the assistant's next
    /// turn starts. An error is the template's message.
    fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String, String>;
}

/// Reads one record; the error names the field at fault (the caller adds file and line).
pub fn record_from_object(object: &Map<String, Value>, fields: &RecordFields) -> Result<Record, String> {
    // A null is an absent field: a Parquet row holds every column.
    let get = |k: &str| object.get(k).filter(|v| !v.is_null());
    if let Some(v) = get(&fields.messages_field) {
        let turns = turns(v, &fields.messages_field)?;
        return conversation(turns, &fields.messages_field);
    }
    // A text field wins over prompt/completion: `distill generate-data` records without `--chat`
    // carry all three, and train on `text`.
    if let Some(Value::String(text)) = get(&fields.field) {
        return Ok(Record::Text(text.clone()));
    }
    if let (Some(p), Some(c)) = (get(&fields.prompt_field), get(&fields.completion_field)) {
        let mut all = match p {
            Value::String(s) => vec![Message::user(s)],
            v => turns(v, &fields.prompt_field)?,
        };
        match c {
            Value::String(s) => all.push(Message::assistant(s)),
            v => all.extend(turns(v, &fields.completion_field)?),
        }
        let at = format!("{}/{}", fields.prompt_field, fields.completion_field);
        return conversation(all, &at);
    }
    match get(&fields.field) {
        Some(Value::String(text)) => Ok(Record::Text(text.clone())),
        Some(other) => Err(format!("field `{}` is {}, not a string", fields.field, kind(other))),
        None => Err(format!(
            "no `{}` field (text), `{}` (conversation) or `{}` + `{}`; name yours with format = {{ jsonl = {{ field = \"…\" }} }} (or messages_field, prompt_field, completion_field)",
            fields.field, fields.messages_field, fields.prompt_field, fields.completion_field
        )),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A list of `{role, content}` objects under `field`.
fn turns(v: &Value, field: &str) -> Result<Vec<Message>, String> {
    let Value::Array(items) = v else {
        return Err(format!("field `{field}` is {}, not a list of turns", kind(v)));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let at = format!("{field}[{i}]");
            let Value::Object(m) = item else {
                return Err(format!("{at} is {}, not a {{role, content}} object", kind(item)));
            };
            let role = match m.get("role") {
                Some(Value::String(r)) => r.as_str(),
                Some(other) => return Err(format!("{at}.role is {}, not a string", kind(other))),
                None => return Err(format!("{at} has no `role`")),
            };
            if !ROLES.contains(&role) {
                return Err(format!("{at}: unknown role `{role}` (expected one of {})", ROLES.join(", ")));
            }
            let content = match m.get("content") {
                Some(Value::String(c)) => c.as_str(),
                Some(other) => return Err(format!("{at}.content is {}, not a string", kind(other))),
                None => return Err(format!("{at} has no `content`")),
            };
            Ok(Message::new(role, content))
        })
        .collect()
}

fn conversation(turns: Vec<Message>, at: &str) -> Result<Record, String> {
    if !turns.iter().any(|m| m.role == "assistant") {
        return Err(format!("the conversation in `{at}` has no assistant turn (nothing to learn)"));
    }
    Ok(Record::Conversation(turns))
}

/// The conversation's text and the byte spans of its assistant turns (see the module doc).
pub fn render(template: &dyn ChatTemplate, messages: &[Message]) -> Result<(String, Vec<Range<usize>>), String> {
    let full = template.render(messages, false)?;
    let mut spans = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        if m.role != "assistant" {
            continue;
        }
        let before = template.render(&messages[..i], true)?;
        let through = if i + 1 == messages.len() { full.clone() } else { template.render(&messages[..=i], false)? };
        if !through.starts_with(&before) || !full.starts_with(&through) {
            return Err(format!(
                "the chat template does not render turn {i} as a prefix of the conversation, so its assistant tokens cannot be found; set data.assistant_only = false to train on every token"
            ));
        }
        if through.len() > before.len() {
            spans.push(before.len()..through.len());
        }
    }
    Ok((full, spans))
}

/// Per token (by its byte `offsets` in the text): 1 when it starts inside one of `spans`.
pub fn span_mask(offsets: &[(usize, usize)], spans: &[Range<usize>]) -> Vec<u8> {
    offsets.iter().map(|&(start, _)| u8::from(spans.iter().any(|s| s.contains(&start)))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    struct ChatMl;
    impl ChatTemplate for ChatMl {
        fn render(&self, messages: &[Message], gen: bool) -> Result<String, String> {
            let mut s: String =
                messages.iter().map(|m| format!("<|im_start|>{}\n{}<|im_end|>\n", m.role, m.content)).collect();
            if gen {
                s.push_str("<|im_start|>assistant\n");
            }
            Ok(s)
        }
    }

    #[test]
    fn records_of_every_form() {
        let f = RecordFields::default();
        let msgs =
            obj(json!({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}));
        assert_eq!(
            record_from_object(&msgs, &f).unwrap(),
            Record::Conversation(vec![Message::user("Hi"), Message::assistant("Hello")])
        );
        let pc = obj(json!({"prompt": "Hi", "completion": "Hello"}));
        assert_eq!(record_from_object(&pc, &f).unwrap(), record_from_object(&msgs, &f).unwrap());
        // `messages` first, then `text`, then prompt/completion.
        let all = obj(json!({"prompt": "Hi", "completion": "Hello", "text": "Hi Hello"}));
        assert_eq!(record_from_object(&all, &f).unwrap(), Record::Text("Hi Hello".into()));
        assert_eq!(record_from_object(&obj(json!({"text": "a b"})), &f).unwrap(), Record::Text("a b".into()));
        let custom = RecordFields { messages_field: "conv".into(), ..RecordFields::default() };
        let c = obj(json!({"conv": [{"role": "assistant", "content": "x"}]}));
        assert!(matches!(record_from_object(&c, &custom).unwrap(), Record::Conversation(_)));
    }

    #[test]
    fn bad_records_name_the_field() {
        let f = RecordFields::default();
        let err = |v: Value| record_from_object(&obj(v), &f).unwrap_err();
        assert_eq!(
            err(json!({"messages": [{"role": "user", "content": "Hi"}]})),
            "the conversation in `messages` has no assistant turn (nothing to learn)"
        );
        assert_eq!(
            err(json!({"messages": [{"role": "bot", "content": "Hi"}]})),
            "messages[0]: unknown role `bot` (expected one of system, user, assistant, tool)"
        );
        assert_eq!(err(json!({"messages": "Hi"})), "field `messages` is a string, not a list of turns");
        assert_eq!(
            err(json!({"messages": [{"role": "user", "content": 3}]})),
            "messages[0].content is a number, not a string"
        );
        assert!(err(json!({"content": "x"})).starts_with("no `text` field (text), `messages` (conversation)"));
        assert_eq!(err(json!({"text": 5})), "field `text` is a number, not a string");
    }

    #[test]
    fn assistant_spans_by_prefix_rendering() {
        let m = [
            Message::new("system", "Be brief."),
            Message::user("Hi"),
            Message::assistant("Hello"),
            Message::user("Bye"),
            Message::assistant("Ciao"),
        ];
        let (text, spans) = render(&ChatMl, &m).unwrap();
        let got: Vec<&str> = spans.iter().map(|s| &text[s.clone()]).collect();
        assert_eq!(got, ["Hello<|im_end|>\n", "Ciao<|im_end|>\n"]);
        assert_eq!(span_mask(&[(0, 3), (spans[0].start, 1), (spans[0].end, 2)], &spans), [0, 1, 0]);
    }
}
