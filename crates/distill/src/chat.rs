//! Chat templates: a model's Jinja template (a GGUF's `tokenizer.chat_template`, an HF
//! directory's `chat_template.jinja` or `tokenizer_config.json`) rendered as transformers'
//! `apply_chat_template` renders it — `trim_blocks` and `lstrip_blocks` on; `messages`,
//! `add_generation_prompt`, `bos_token`, `eos_token` and `raise_exception` in scope — by
//! minijinja. Templates that call Python string methods (`.strip()`, …) are refused with the
//! template engine's error.

use minijinja::{context, Environment, ErrorKind};
use serde::Serialize;

use crate::{Error, Result};

/// One turn of a conversation.
#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn user(content: &str) -> Self {
        Self { role: "user".into(), content: content.into() }
    }
}

/// `template` applied to `messages`; with `add_generation_prompt` the text ends where the
/// assistant's answer starts.
pub fn apply_chat_template(
    template: &str,
    messages: &[Message],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
        Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
    });
    let bad = |e: minijinja::Error| Error::Invalid(format!("chat template: {e}"));
    let t = env.template_from_str(template).map_err(bad)?;
    t.render(context! {
        messages => messages,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token,
        eos_token => eos_token,
    })
    .map_err(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_with_a_default_system_turn_and_exceptions() {
        let t = "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}<s>sys\n{% endif %}\
                 {{ '<|' + m['role'] + '|>' + m['content'] + eos_token }}\n{% endfor %}\
                 {% if add_generation_prompt %}<|assistant|>{% endif %}";
        let out = apply_chat_template(t, &[Message::user("Hi")], true, "<s>", "</s>").unwrap();
        assert_eq!(out, "<s>sys\n<|user|>Hi</s>\n<|assistant|>");
        let raising = "{% if messages|length > 1 %}{{ raise_exception('one turn only') }}{% endif %}ok";
        let two = [Message::user("a"), Message::user("b")];
        let err = apply_chat_template(raising, &two, false, "", "").unwrap_err().to_string();
        assert!(err.contains("one turn only"), "{err}");
        assert!(apply_chat_template("{% for %}", &two, false, "", "").is_err());
    }
}
