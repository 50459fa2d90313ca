"""The instruction prompt of the BEAR paper (Figure 2), shared by training, decoding and `recommend`.

The prompt ends right before the answer; the answer (the target title followed by EOS) is tokenised
on its own, exactly as the catalog trie tokenises titles, so training and constrained decoding see the
same token sequences. For chat/instruct models the prompt can instead be the user turn of the
tokenizer's chat template, followed by the opening of the assistant turn.
"""

from __future__ import annotations

from dataclasses import dataclass

from bearrec.data.dataset import RecDataset
from bearrec.items.trie import tokenize_titles

# domain noun -> (singular, verb used in "the user has ... before")
_DOMAINS = {
    "movies": ("movie", "watched"),
    "books": ("book", "read"),
    "products": ("product", "bought"),
    "games": ("game", "played"),
    "songs": ("song", "listened to"),
}


@dataclass(frozen=True)
class PromptTemplate:
    """Figure 2 of the paper with the domain noun filled in ("movies", "products", ...)."""

    domain: str = "products"

    @property
    def singular(self) -> str:
        return _DOMAINS.get(self.domain, (self.domain.removesuffix("s"), ""))[0]

    @property
    def verb(self) -> str:
        return _DOMAINS.get(self.domain, ("", "interacted with"))[1]

    def instruction(self) -> str:
        return (
            f"Given a list of {self.domain} the user has {self.verb} before, "
            f"please recommend a new {self.singular} that the user likes to the user."
        )

    def render(self, history_titles: list[str], response_header: bool = True) -> str:
        """Prompt text for a history (titles oldest first); the model continues with the answer title.

        Without ``response_header`` the text stops after the input section (the user turn of a chat).
        """
        listed = ", ".join(f'"{t}"' for t in history_titles)
        text = (
            f"### Instruction:\n{self.instruction()}\n\n"
            f"### Input:\nThe user has {self.verb} the following {self.domain} before: {listed}"
        )
        return text + "\n\n### Response:\n" if response_header else text


class PromptEncoder:
    """Token ids of prompts and answers for one catalog, tokenizer and template.

    Answers are the catalog's title sequences (title + EOS, as in the trie); the prompt shows each history item as
    ``history_texts`` says (default: its title). Prompts longer than
    ``max_prompt_tokens`` drop their oldest history items until they fit; ``truncated`` counts them.
    With ``chat_template`` the Figure 2 text is the user message of the tokenizer's chat template and
    the prompt ends with the template's assistant header.
    """

    def __init__(self, tokenizer, titles: list[str], template: PromptTemplate, max_prompt_tokens: int = 1024,
                 chat_template: bool = False, history_texts: list[str] | None = None):
        if chat_template and not getattr(tokenizer, "chat_template", None):
            raise ValueError("chat_template: the tokenizer has no chat template (set chat_template: false)")
        self.tokenizer = tokenizer
        self.titles = titles
        self.history_texts = history_texts or titles  # how the prompt shows each item (semantic IDs: with titles)
        self.template = template
        self.max_prompt_tokens = max_prompt_tokens
        self.chat_template = chat_template
        self.answers = tokenize_titles(tokenizer, titles)
        self.truncated = 0

    def _encode(self, history: list[int]) -> list[int]:
        titles = [self.history_texts[i] for i in history]
        if not self.chat_template:
            return self.tokenizer(self.template.render(titles))["input_ids"]
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": self.template.render(titles, False)}],
                                                  tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]  # the template has its own markers

    def prompts(self, histories: list[list[int]]) -> list[list[int]]:
        """Prompt ids for histories given as catalog indices, oldest first."""
        encoded = [self._encode(h) for h in histories]
        for n, ids in enumerate(encoded):
            keep = len(histories[n])
            while len(ids) > self.max_prompt_tokens and keep > 1:
                keep -= 1
                ids = self._encode(histories[n][-keep:])
            if keep < len(histories[n]):
                self.truncated += 1
            encoded[n] = ids
        return encoded


def encode_split(
    dataset: RecDataset, split: str, encoder: PromptEncoder, limit: int | None = None, seed: int = 0
) -> tuple[list[list[int]], list[int]]:
    """(prompt ids, target catalog indices) of a split, optionally a seeded subsample of ``limit`` examples."""
    histories, targets = dataset.examples(split, limit, seed)
    return encoder.prompts(histories), targets
