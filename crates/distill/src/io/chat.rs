//! Chat templates: a model's Jinja template (a GGUF's `tokenizer.chat_template`, an HF
//! directory's `chat_template.jinja` or `tokenizer_config.json`) rendered as transformers'
//! `apply_chat_template` renders it — `trim_blocks` and `lstrip_blocks` on; `messages`,
//! `add_generation_prompt`, `bos_token`, `eos_token` and `raise_exception` in scope — by
//! minijinja. Templates that call Python string methods (`.strip()`, …) are refused with the
//! template engine's error.

use minijinja::{context, Environment, ErrorKind};

use crate::{Error, Result};

pub use distill_text::Message;

/// A model's chat template with its BOS and EOS token strings: what renders the conversation
/// records of a data set (`distill_text::ChatTemplate`).
#[derive(Debug, Clone)]
pub struct ModelChat {
    pub template: String,
    pub bos: String,
    pub eos: String,
}

impl ModelChat {
    /// `user` as one user turn, ending where the assistant's answer starts.
    pub fn prompt(&self, user: &str) -> Result<String> {
        apply_chat_template(&self.template, &[Message::user(user)], true, &self.bos, &self.eos)
    }
}

impl distill_text::ChatTemplate for ModelChat {
    fn render(&self, messages: &[Message], add_generation_prompt: bool) -> std::result::Result<String, String> {
        apply_chat_template(&self.template, messages, add_generation_prompt, &self.bos, &self.eos)
            .map_err(|e| e.to_string())
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
    // A template comes with the model file: untrusted. Fuel bounds its work (a real chat
    // template spends a few hundred units per message; nested loops over `range(100000)` would
    // spend billions), and the prompt it renders is capped.
    env.set_fuel(Some(FUEL_PER_MESSAGE * (messages.len() as u64 + 1)));
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
        Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
    });
    let bad = |e: minijinja::Error| Error::Invalid(format!("chat template: {e}"));
    let t = env.template_from_str(template).map_err(bad)?;
    let out = t
        .render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => bos_token,
            eos_token => eos_token,
        })
        .map_err(bad)?;
    let given: usize = messages.iter().map(|m| m.content.len()).sum();
    if out.len() > given + MAX_TEMPLATE_TEXT {
        return Err(Error::Invalid(format!(
            "chat template: it rendered {} bytes around {given} bytes of messages (at most {MAX_TEMPLATE_TEXT} of its own)",
            out.len()
        )));
    }
    Ok(out)
}

/// Work a template may spend per message (minijinja fuel units; one per instruction).
const FUEL_PER_MESSAGE: u64 = 200_000;

/// Text a template may add around the messages (system prompts, role markers).
const MAX_TEMPLATE_TEXT: usize = 1 << 20;

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
        // A template that would loop for 10^10 steps runs out of fuel instead.
        let spin = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";
        let err = apply_chat_template(spin, &two, false, "", "").unwrap_err().to_string();
        assert!(err.contains("chat template") && err.contains("fuel"), "{err}");
    }
}
