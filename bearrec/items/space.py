"""The item space of a run: one catalog under one tokenizer, tokenised once.

Training, validation, ``evaluate``, ``recommend`` and ``serve`` all decode in the same space, built here from the
dataset and the run's representation:

* ``titles``: each item is spelled by its title, and the prompt is the paper's Figure 2 text
  (:class:`~bearrec.items.prompts.PromptTemplate`);
* ``semantic-ids``: each item is spelled by its codes as code tokens (``<a_12><b_3>...``), and the prompt is the
  history's codes (:class:`~bearrec.items.semantic_ids.CodePrompt`, the tiny model's), or an instruction followed
  by them, optionally with titles (:class:`~bearrec.items.semantic_ids.CodeInstructionPrompt`, a pretrained LM's).

The answers (item text + EOS as token ids) are tokenised once and shared by the prompt encoder (training labels)
and the trie (constrained decoding), so both always agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from bearrec.data.dataset import RecDataset
from bearrec.items.prompts import PromptEncoder, PromptTemplate
from bearrec.items.semantic_ids import CodeInstructionPrompt, CodePrompt, code_strings, dataset_codes, history_line
from bearrec.items.trie import ItemTrie, catalog_trie
from bearrec.lm.forward import Prompts, left_pad


def item_texts(dataset: RecDataset, representation: str) -> list[str]:
    """What the model spells for each item: its title, or its semantic ID as code tokens."""
    return code_strings(dataset_codes(dataset)) if representation == "semantic-ids" else dataset.titles


@dataclass(frozen=True)
class ItemSpace:
    """A catalog under a tokenizer: the ``tokenizer``, the prompt ``encoder`` (whose ``answers`` are every item's
    token ids, text + EOS) and the ``trie`` over those same answers."""

    tokenizer: object
    encoder: PromptEncoder
    trie: ItemTrie

    @classmethod
    def build(cls, tokenizer, dataset: RecDataset, representation: str = "titles", max_prompt_tokens: int = 1024,
              chat_template: bool = False, sid_prompt: str = "codes") -> ItemSpace:
        """Tokenise ``dataset``'s catalog once; a ``ValueError`` when two items tokenise alike (the trie could not
        tell them apart) or the tokenizer cannot end an item (no EOS). ``sid_prompt`` (semantic IDs): ``codes``
        (:class:`~bearrec.items.semantic_ids.CodePrompt`), ``instruction`` or ``instruction-titles``
        (:class:`~bearrec.items.semantic_ids.CodeInstructionPrompt`, the second with each history item's title)."""
        texts = item_texts(dataset, representation)
        history = None
        if representation != "semantic-ids":
            template = PromptTemplate(dataset.domain)
        elif sid_prompt == "codes":
            template = CodePrompt()
        else:
            template = CodeInstructionPrompt(dataset.domain)
            if sid_prompt == "instruction-titles":  # (instruction: the history is the codes alone, as the answers)
                titled = dataset.titled
                if not any(titled):
                    raise ValueError("code_tokens.prompt: instruction-titles shows titles, and this catalog has none "
                                     "(use instruction)")
                history = [history_line(c, t if has else "") for c, t, has in zip(texts, dataset.titles, titled)]
        encoder = PromptEncoder(tokenizer, texts, template, max_prompt_tokens, chat_template=chat_template,
                                history_texts=history)
        return cls(tokenizer, encoder, catalog_trie(encoder.answers, tokenizer.eos_token_id))

    @property
    def num_items(self) -> int:
        return self.trie.num_items

    def prompts(self, histories: list[list[int]]) -> Prompts:
        """Left-padded prompts ``[N, L]`` for histories of catalog indices (oldest first)."""
        return left_pad(self.encoder.prompts(histories), self.tokenizer.pad_token_id)
