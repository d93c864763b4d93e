//! Terminal interaction: y/N confirmation (refusing without a terminal unless `-y`), the
//! deploy progress display (an indicatif spinner on a terminal, plain timestamped lines
//! otherwise, both on stderr), and the ready-to-paste usage snippets printed at the end.

use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::error::CmdError;

/// Whether stdin and stderr are both terminals (a person can answer a question).
pub fn interactive() -> bool {
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

/// Asks `question [y/N]` on stderr. Without a terminal: `Err` telling to pass `-y`.
pub fn confirm(question: &str, yes: bool) -> Result<bool, CmdError> {
    if yes {
        return Ok(true);
    }
    if !interactive() {
        return Err(CmdError::NotConfirmed(format!(
            "{question}: no terminal to ask on; pass -y to proceed without asking"
        )));
    }
    ask(question, false)
}

/// Asks on the terminal; `default` is taken on an empty answer or a read error.
pub fn ask(question: &str, default: bool) -> Result<bool, CmdError> {
    let hint = if default { "[Y/n]" } else { "[y/N]" };
    let mut err = std::io::stderr();
    let _ = write!(err, "{question} {hint} ");
    let _ = err.flush();
    let mut line = String::new();
    match std::io::stdin().lock().read_line(&mut line) {
        Ok(0) | Err(_) => Ok(default),
        Ok(_) => Ok(match line.trim().to_ascii_lowercase().as_str() {
            "" => default,
            "y" | "yes" => true,
            _ => false,
        }),
    }
}

/// [`ask`], where a Ctrl-C while the question waits answers `None` instead. The terminal
/// read runs on a thread of its own, left behind (blocked in the read) when Ctrl-C wins.
pub async fn ask_interruptible(question: &str, default: bool) -> Result<Option<bool>, CmdError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let question = question.to_string();
    std::thread::spawn(move || {
        let _ = tx.send(ask(&question, default));
    });
    tokio::select! {
        answer = rx => match answer {
            Ok(a) => a.map(Some),
            Err(_) => Ok(Some(default)),
        },
        _ = tokio::signal::ctrl_c() => Ok(None),
    }
}

/// Progress of a long step: a spinner with elapsed time on a terminal, otherwise one line
/// per change of message.
pub struct Progress {
    bar: Option<ProgressBar>,
    started: Instant,
    last: String,
}

impl Progress {
    pub fn new(initial: &str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}") {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        let mut p = Self {
            bar,
            started: Instant::now(),
            last: String::new(),
        };
        p.set(initial);
        p
    }

    /// Updates the message (printed as a new line only when it changed, without a terminal).
    pub fn set(&mut self, msg: &str) {
        if msg == self.last {
            return;
        }
        self.last = msg.to_string();
        match &self.bar {
            Some(bar) => bar.set_message(msg.to_string()),
            None => eprintln!("[{}] {msg}", elapsed(self.started.elapsed())),
        }
    }

    /// Prints a line above the spinner.
    pub fn println(&self, msg: &str) {
        match &self.bar {
            Some(bar) => bar.println(msg),
            None => eprintln!("{msg}"),
        }
    }

    pub fn finish(self, msg: &str) {
        match self.bar {
            Some(bar) => bar.finish_with_message(msg.to_string()),
            None => eprintln!("[{}] {msg}", elapsed(self.started.elapsed())),
        }
    }

    pub fn abandon(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// `mm:ss` or `h:mm:ss`.
pub fn elapsed(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
    } else {
        format!("{:02}:{:02}", s / 60, s % 60)
    }
}

/// What to print once the endpoint answers: BASE_URL, the model, curl and Python snippets.
pub fn ready_message(name: &str, base_url: &str, model: &str) -> String {
    format!(
        "\nYour endpoint is ready.\n\n\
         BASE_URL={base_url}\n\
         MODEL={model}\n\n\
         Try it:\n\n\
         curl {base_url}/chat/completions \\\n\
         \x20 -H 'Content-Type: application/json' \\\n\
         \x20 -d '{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Say hello\"}}]}}'\n\n\
         python3 - <<'EOF'\n\
         from openai import OpenAI\n\
         client = OpenAI(base_url=\"{base_url}\", api_key=\"unused\")\n\
         reply = client.chat.completions.create(\n\
         \x20   model=\"{model}\",\n\
         \x20   messages=[{{\"role\": \"user\", \"content\": \"Say hello\"}}],\n\
         )\n\
         print(reply.choices[0].message.content)\n\
         EOF\n\n\
         The instance bills by the hour until you run: ai-sandbox destroy {name}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elapsed_formats() {
        assert_eq!(elapsed(Duration::from_secs(75)), "01:15");
        assert_eq!(elapsed(Duration::from_secs(3725)), "1:02:05");
    }

    #[test]
    fn ready_message_has_base_url_and_destroy_hint() {
        let m = ready_message("box", "http://1.2.3.4:8000/v1", "a/b");
        assert!(m.contains("BASE_URL=http://1.2.3.4:8000/v1\n"));
        assert!(m.contains("curl http://1.2.3.4:8000/v1/chat/completions"));
        assert!(m.contains("base_url=\"http://1.2.3.4:8000/v1\""));
        assert!(m.contains("ai-sandbox destroy box"));
    }
}
