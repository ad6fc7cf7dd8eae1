"""How a data set's question becomes an Item prompt: the plain format the references use for base models, or the
chat template of the audited model's tokenizer (what open-unlearning's instruct models were fine-tuned on)."""

from __future__ import annotations

from typing import Sequence

from palimpsest.concepts.spec import ConceptError


class PromptFormat:
    """Without a tokenizer: open-unlearning's base-model QA format, "Question: {q}\\nAnswer:" (few-shot pairs
    before it as "Question: {q}\\nAnswer: {a}\\n\\n"). With one: its chat template, the question as the user turn
    after an optional system prompt, rendered with the generation prompt (the leading BOS text removed: the
    tokenizer adds it again when the prompt is encoded)."""

    def __init__(self, tokenizer=None, *, system_prompt: str | None = None, date_string: str | None = None,
                 source: str = "") -> None:
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.date_string = date_string
        self.source = source

    @classmethod
    def from_options(cls, chat_template: str | None, system_prompt: str | None = None,
                     date_string: str | None = None) -> "PromptFormat":
        if chat_template is None:
            if system_prompt is not None or date_string is not None:
                raise ConceptError("--system-prompt and --date-string apply to a chat template: give "
                                   "--chat-template MODEL (the model whose tokenizer renders the prompts)")
            return cls()
        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(chat_template, trust_remote_code=False)
        except Exception as error:  # noqa: BLE001 — hub, disk and parse errors alike: one line for the user
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ConceptError(f"--chat-template {chat_template}: cannot load its tokenizer ({first})") from None
        if not getattr(tokenizer, "chat_template", None):
            raise ConceptError(f"--chat-template {chat_template}: its tokenizer has no chat template")
        return cls(tokenizer, system_prompt=system_prompt, date_string=date_string, source=chat_template)

    @property
    def chat(self) -> bool:
        return self.tokenizer is not None

    def describe(self) -> str:
        if not self.chat:
            return "plain prompts (no chat template)"
        extra = [f"system prompt {self.system_prompt!r}"] if self.system_prompt else []
        extra += [f"date {self.date_string!r}"] if self.date_string else []
        return f"the chat template of {self.source}" + (f" ({', '.join(extra)})" if extra else "")

    def question(self, question: str, shots: Sequence[tuple[str, str]] = ()) -> str:
        """A question to answer (TOFU, MUSE knowmem, the cloze WMDP format)."""
        if not self.chat:
            return "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in shots) + f"Question: {question}\nAnswer:"
        return self.render(question, shots)

    def user(self, text: str) -> str:
        """A prompt the data set writes in full (RWKU's instructions, the lm-eval WMDP prompt): as it is, or as the
        user turn of the chat template."""
        return self.render(text) if self.chat else text

    def render(self, text: str, shots: Sequence[tuple[str, str]] = ()) -> str:
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        for q, a in shots:
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        messages.append({"role": "user", "content": text})
        kwargs = {"date_string": self.date_string} if self.date_string else {}
        try:
            rendered = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                          **kwargs)
        except Exception as error:  # noqa: BLE001 — template (jinja) errors
            raise ConceptError(f"--chat-template {self.source}: the template failed to render ({error})") from None
        bos = getattr(self.tokenizer, "bos_token", None)
        if bos and rendered.startswith(bos):
            rendered = rendered[len(bos):]
        return rendered
